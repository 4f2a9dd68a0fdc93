# How Shop's cost grows: `scripts/bench curves` and `scripts/bench soak [MINUTES]`.
# Sourced by scripts/bench after its machine references, with its helpers (shop_env,
# wait_ready, load, stop_pids, rss_kib, ...). Every point runs the seven programs as their own
# processes (`shop run X`, as deployed; the backlog point stops one of them) on a fresh
# namespace and database, removed as soon as the point is measured.
#
# curves:
#   1. concurrency 1, 4, 16, 64, 256 closed-loop clients: completed sagas/s, saga p50/p99;
#   2. data: an empty database against 1,000,000 orders seeded in bulk (cloned in SQL from a
#      real confirmed order, with its payment, reservation, history and notification, so the
#      audit still holds): placing an order at 50/s, listing a user's orders, the deadline
#      scanner's cycle, `shop audit`, saturation; the plans of the hot queries are printed;
#   3. catalog of 20 against 100,000 products and 20 against 10,000 users with sessions:
#      cached product reads/s and saga throughput;
#   4. a backlog of 100,000 product.created events waiting for inventory (stopped), then
#      drained: time, rate, inventory's memory while draining;
#   then a table per curve and one SVG chart (target/bench-curves.svg).
# soak: half the saturation rate for MINUTES (default BENCH_SOAK_MINUTES or 20), each program's
#   memory, file descriptors, sockets and the saga p99 per minute, first and last side by side.
#
# Knobs: BENCH_CURVES (which curves, default "concurrency data catalog"; catalog includes the
# users and the backlog), BENCH_CURVE_SECONDS (each measured run, default 10), BENCH_ORDERS (1000000),
# BENCH_PRODUCTS (100000), BENCH_USERS (10000), BENCH_BACKLOG (= BENCH_PRODUCTS).

CURVE_SECONDS=${BENCH_CURVE_SECONDS:-10}
N_ORDERS=${BENCH_ORDERS:-1000000}
N_PRODUCTS=${BENCH_PRODUCTS:-100000}
N_USERS=${BENCH_USERS:-10000}
CURVES=$OUT/curves.tsv # curve <tab> point <tab> figure <tab> value (a soak run keeps it)
touch "$CURVES"
figure() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$CURVES"; }
fig() { awk -F'\t' -v c="$1" -v p="$2" -v f="$3" '$1 == c && $2 == p && $3 == f { v = $4 } END { print (v == "" ? "-" : v) }' "$CURVES"; }

declare -A PID_OF

# Starts the seven programs of a deployment called $1 (extra environment in $2...).
start_seven() {
    local name=$1 p
    shift
    shop_env "$name" "$(free_port_base 18680)"
    export SHOP_DRAIN_SECS=0 # stopped at once between points
    EXTRA_VARS=()
    for kv in "$@"; do export "${kv?}"; EXTRA_VARS+=("${kv%%=*}"); done
    log "$name: seven processes on $GATEWAY"
    for p in "${PROGRAMS[@]}"; do start_program "$p"; done
    wait_ready
}
start_program() {
    "$SERVER" run "$1" >>"$OUT/$SHOP_NAMESPACE-$1.log" 2>&1 &
    PID_OF[$1]=$!
    PIDS+=("$!")
}
# Stops the deployment's programs and removes its database, queues and keys now.
stop_seven() {
    stop_pids "${PIDS[@]}"
    PIDS=()
    ((${#EXTRA_VARS[@]})) && unset "${EXTRA_VARS[@]}"
    remove_deployment "$SHOP_NAMESPACE" "${SHOP_DATABASE_URL##*/}"
    NAMESPACES=("${NAMESPACES[@]/$SHOP_NAMESPACE/}")
    DATABASES=("${DATABASES[@]/${SHOP_DATABASE_URL##*/}/}")
}

sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$SHOP_DATABASE_URL" "$@"; }
api() { # method path [token] [json body]
    curl -sf -X "$1" "$GATEWAY/api$2" ${3:+-H "authorization: Bearer $3"} \
        ${4:+-H 'content-type: application/json' -d "$4"}
}

# Registers and logs in $1 users; their tokens go to $OUT/tokens, their ids to USER_IDS.
register_users() {
    local i email
    : >"$OUT/tokens"
    USER_IDS=()
    for i in $(seq 1 "$1"); do
        email="curve-$i-$RANDOM@bench.test"
        USER_IDS+=("$(api POST /auth/register '' "{\"email\":\"$email\",\"password\":\"curve-password-1\",\"name\":\"Curve $i\"}" | jq -r .id)")
        api POST /auth/login '' "{\"email\":\"$email\",\"password\":\"curve-password-1\"}" | jq -r .token >>"$OUT/tokens"
    done
    ADMIN_TOKEN=$(api POST /auth/login '' "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" | jq -r .token)
}

# A product with plenty of stock that inventory knows: its id in TEMPLATE_PRODUCT.
template_product() {
    TEMPLATE_PRODUCT=$(api POST /products "$ADMIN_TOKEN" \
        "{\"sku\":\"CURVE-$RANDOM$RANDOM\",\"name\":\"Curve product\",\"description\":\"bench\",\"price_cents\":1500,\"initial_stock\":1000000}" | jq -r .id)
    until api GET "/inventory/$TEMPLATE_PRODUCT" >/dev/null; do sleep 0.1; done
}

# One confirmed order of the first user, its notification sent: its id in TEMPLATE_ORDER.
template_order() {
    local token
    token=$(head -1 "$OUT/tokens")
    TEMPLATE_ORDER=$(api POST /orders "$token" \
        "{\"items\":[{\"product_id\":\"$TEMPLATE_PRODUCT\",\"quantity\":1}],\"payment_token\":\"tok_visa\"}" | jq -r .id)
    for _ in $(seq 1 300); do
        [[ $(sql -c "SELECT count(*) FROM notifications.notifications WHERE order_id = '$TEMPLATE_ORDER' AND status = 'sent'") == 1 ]] && return
        sleep 0.1
    done
    echo "the template order $TEMPLATE_ORDER did not finish" >&2
    return 1
}

# A UUID v7 (time-ordered, as the services make them) for a row made at `$1` (SQL).
V7="uuid(lpad(to_hex((extract(epoch FROM %s) * 1000)::bigint), 12, '0') || '7' || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))"
v7() { printf "$V7" "$1"; }

# SQL cloning the rows of table $1 (alias t) that `$2` selects, once per row of the temporary
# table `seed` (alias s), with the columns in `$3` (jsonb_build_object's arguments) replaced;
# `$4` joins more tables for them. Every other column is copied as it is.
clone() {
    printf 'INSERT INTO %s SELECT r.* FROM %s t %s, seed s,\n  LATERAL jsonb_populate_record(NULL::%s, to_jsonb(t) || jsonb_build_object(%s)) r\n  WHERE %s;\n' \
        "$1" "$1" "${4-}" "$1" "$3" "$2"
}

# ---- bulk seeds: each clones a real row in SQL (every column, whatever the version of the
# table), changing only its keys and times, so the data is what the services would write ----

# $1 orders, spread over USER_IDS and the last 30 days, cloned from TEMPLATE_ORDER with its
# lines, history, payment, reservation and notification; the stock they sold is added to the
# product's initial stock and sold count, so every invariant of the audit still holds.
seed_orders() {
    local n=$1 users
    users=$(IFS=,; echo "{${USER_IDS[*]}}")
    log "seeding $n orders in SQL"
    sql <<SQL
SET synchronous_commit = off;
BEGIN;
CREATE TEMP TABLE seed ON COMMIT DROP AS
SELECT g, at, $(v7 at) AS id, gen_random_uuid() AS corr,
       ('$users'::uuid[])[1 + g % $((${#USER_IDS[@]}))] AS user_id
FROM (SELECT g, now() - interval '1 hour' - make_interval(secs => 30 * 86400 * (1 - g::float8 / $n)) AS at
      FROM generate_series(1, $n) g) s;
$(clone orders.orders "t.id = '$TEMPLATE_ORDER'" "'id', s.id, 'user_id', s.user_id,
    'correlation_id', s.corr, 'idempotency_key', NULL, 'idempotency_fingerprint', NULL,
    'trace_context', NULL, 'created_at', s.at, 'updated_at', s.at + (t.updated_at - t.created_at)")
$(clone orders.order_items "t.order_id = '$TEMPLATE_ORDER'" "'order_id', s.id")
$(clone orders.order_history "t.order_id = '$TEMPLATE_ORDER'" "'id', nextval('orders.order_history_id_seq'),
    'order_id', s.id, 'at', s.at + (t.at - o.created_at)" "JOIN orders.orders o ON o.id = t.order_id")
$(clone payments.payments "t.order_id = '$TEMPLATE_ORDER'" "'id', gen_random_uuid(), 'order_id', s.id,
    'user_id', s.user_id, 'correlation_id', s.corr, 'request_event_id', gen_random_uuid(),
    'created_at', s.at, 'captured_at', s.at")
$(clone inventory.reservations "t.order_id = '$TEMPLATE_ORDER'" "'order_id', s.id, 'created_at', s.at,
    'updated_at', s.at")
$(clone notifications.notifications "t.order_id = '$TEMPLATE_ORDER'" "'id', gen_random_uuid(),
    'order_id', s.id, 'user_id', s.user_id, 'source_event_id', gen_random_uuid(),
    'correlation_id', s.corr, 'trace_context', NULL, 'created_at', s.at, 'next_attempt_at', s.at,
    'sent_at', s.at")
UPDATE inventory.stock st SET initial = initial + $n * i.quantity, sold = sold + $n * i.quantity
  FROM orders.order_items i WHERE i.order_id = '$TEMPLATE_ORDER' AND st.product_id = i.product_id;
COMMIT;
SQL
    # Vacuumed, analysed and checkpointed, as a database that grew over months would be: a
    # checkpoint of the seed's gigabytes of WAL would otherwise stall the measurements.
    log "vacuuming, analysing, checkpointing"
    sql -c "VACUUM ANALYZE" >/dev/null
    psql_admin -c "CHECKPOINT" >/dev/null
}

# $1 more products cloned from TEMPLATE_PRODUCT, each with its product.created event in the
# products outbox (as the service writes them): the relay publishes them, inventory learns
# each one's stock from its event. Their ids go to $OUT/products.
seed_products() {
    local n=$1
    log "seeding $n products in SQL (and their product.created events in the outbox)"
    sql <<SQL
BEGIN;
CREATE TEMP TABLE seed ON COMMIT DROP AS
SELECT g, $(v7 "now()") AS id, gen_random_uuid() AS event FROM generate_series(1, $n) g;
$(clone products.products "t.id = '$TEMPLATE_PRODUCT'" "'id', s.id, 'sku', t.sku || '-' || s.g,
    'name', t.name || ' ' || s.g")
INSERT INTO products.outbox (event_id, event_type, body)
SELECT s.event, o.event_type, jsonb_set(jsonb_set(jsonb_set(jsonb_set(jsonb_set(o.body::jsonb,
    '{id}', to_jsonb(s.event)), '{aggregate_id}', to_jsonb(s.id)), '{payload,product_id}', to_jsonb(s.id)),
    '{payload,sku}', to_jsonb(p.sku || '-' || s.g)), '{payload,name}', to_jsonb(p.name || ' ' || s.g))::text
  FROM products.outbox o JOIN products.products p ON p.id = '$TEMPLATE_PRODUCT', seed s
  WHERE o.event_type = 'product.created' AND o.body::jsonb #>> '{payload,product_id}' = '$TEMPLATE_PRODUCT'
  ORDER BY s.g;
COMMIT;
SQL
    sql -c "SELECT id FROM products.products WHERE id <> '$TEMPLATE_PRODUCT' ORDER BY id" >"$OUT/products"
}

# $1 more users cloned from the first one (same password), each known to notifications as a
# recipient (what user.registered tells it) and logged in: a session in Redis as the users
# service writes it. Their tokens are added to $OUT/tokens.
seed_users() {
    local n=$1 first=${USER_IDS[0]}
    log "seeding $n users in SQL and their sessions in Redis"
    sql <<SQL
BEGIN;
CREATE TEMP TABLE seed ON COMMIT DROP AS SELECT g, $(v7 "now()") AS id FROM generate_series(1, $n) g;
$(clone users.users "t.id = '$first'" "'id', s.id, 'email', 'bulk-' || s.g || '-' || t.email")
$(clone notifications.recipients "t.user_id = '$first'" "'user_id', s.id, 'email', 'bulk-' || s.g || '-' || t.email")
COMMIT;
SQL
    sql -c "SELECT id FROM users.users WHERE email LIKE 'bulk-%'" |
        python3 -c '
import base64, hashlib, json, os, sys
ns, ttl, out = sys.argv[1], sys.argv[2], open(sys.argv[3], "a")
def cmd(*a):
    return "*%d\r\n" % len(a) + "".join("$%d\r\n%s\r\n" % (len(x.encode()), x) for x in a)
for uid in sys.stdin.read().split():
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    sid = hashlib.sha256(token.encode()).hexdigest()
    sys.stdout.write(cmd("SET", f"{ns}:session:{sid}", json.dumps({"user_id": uid, "role": "user"}), "EX", ttl))
    sys.stdout.write(cmd("SADD", f"{ns}:user-sessions:{uid}", sid))
    sys.stdout.write(cmd("EXPIRE", f"{ns}:user-sessions:{uid}", ttl))
    out.write(token + "\n")
' "$SHOP_NAMESPACE" 86400 "$OUT/tokens" | redis-cli -h 127.0.0.1 --pipe >/dev/null
}

# ---- measurements ----

# Mean seconds of orders' deadline scans since the last call (its /metrics).
scan_mark() { curl -s "http://127.0.0.1:$SHOP_ORDERS_PORT/metrics" | awk '/^shop_saga_deadline_scan_seconds_sum/ { s = $NF } /^shop_saga_deadline_scan_seconds_count/ { c = $NF } END { print s + 0, c + 0 }'; }
scan_mean_ms() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); n = y[2] - x[2]; printf "%.3f", (n > 0 ? (y[1] - x[1]) / n * 1000 : 0) }'; }

# The figures of the data curve, for point $1 (the deployment running, USER_IDS' tokens in
# $OUT/tokens): POST /api/orders and the saga at 50/s, GET /api/orders, a deadline scan, the
# audit, saturation.
measure_data_point() {
    local point=$1 name=$SHOP_NAMESPACE before t0
    before=$(scan_mark)
    load "$name-rate50" --tokens "$OUT/tokens" --product-ids <(echo "$TEMPLATE_PRODUCT") --rate 50 --duration "$CURVE_SECONDS" --audit false
    figure data "$point" "deadline scan mean (ms)" "$(scan_mean_ms "$before" "$(scan_mark)")"
    figure data "$point" "POST /api/orders p50 at 50/s (ms)" "$(j "$name-rate50" .http_latency.p50_ms)"
    figure data "$point" "POST /api/orders p99 at 50/s (ms)" "$(j "$name-rate50" .http_latency.p99_ms)"
    figure data "$point" "saga p99 at 50/s (ms)" "$(j "$name-rate50" .saga_latency.p99_ms)"
    load "$name-list" --mode list-orders --tokens "$OUT/tokens" --concurrency 8 --duration "$CURVE_SECONDS" --audit false
    figure data "$point" "GET /api/orders (first page) per s" "$(j "$name-list" .succeeded_per_sec)"
    figure data "$point" "GET /api/orders p50 (ms)" "$(j "$name-list" .http_latency.p50_ms)"
    figure data "$point" "GET /api/orders p99 (ms)" "$(j "$name-list" .http_latency.p99_ms)"
    t0=$(date +%s.%N)
    SHOP_LOG=off "$SHOP" audit >"$OUT/$name-audit.txt" 2>&1 || log "$point: the audit failed (see $OUT/$name-audit.txt)"
    figure data "$point" "shop audit (s)" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    load "$name-saturation" --tokens "$OUT/tokens" --product-ids <(echo "$TEMPLATE_PRODUCT") --concurrency "$CONCURRENCY" --duration "$CURVE_SECONDS" --audit false
    figure data "$point" "completed sagas/s at saturation" "$(j "$name-saturation" .completed_sagas_per_sec)"
}

# The plans of the hot queries on the seeded database (what each scan reads).
explain_hot_queries() {
    local user=${USER_IDS[0]}
    {
        echo "== placing an order: the idempotency lookup, then the insert (by primary key)"
        sql -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT id FROM orders.orders WHERE user_id = '$user' AND idempotency_key = 'x'"
        echo "== listing a user's orders (first page)"
        sql -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT id FROM orders.orders WHERE user_id = '$user' ORDER BY id DESC LIMIT 21"
        echo "== the deadline scanner"
        sql -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT id FROM orders.orders WHERE deadline_at <= now() ORDER BY deadline_at LIMIT 100"
        echo "== the relay's claim (orders' outbox)"
        sql -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT id FROM orders.outbox WHERE sent_at IS NULL ORDER BY id LIMIT 100"
    } >"$OUT/plans.txt" 2>&1
}

curve_concurrency() {
    local c name
    for c in 1 4 16 64 256; do
        start_seven "c$c"
        name=$SHOP_NAMESPACE
        load "$name" --concurrency "$c" --max-pending $((c > 256 ? c : 256)) --duration "$CURVE_SECONDS" --decline-pct 5 --out-of-stock-pct 5
        figure concurrency "$c" "completed sagas/s" "$(j "$name" .completed_sagas_per_sec)"
        figure concurrency "$c" "saga p50 (ms)" "$(j "$name" .saga_latency.p50_ms)"
        figure concurrency "$c" "saga p99 (ms)" "$(j "$name" .saga_latency.p99_ms)"
        figure concurrency "$c" "POST /api/orders p99 (ms)" "$(j "$name" .http_latency.p99_ms)"
        check_run "$name"
        stop_seven
    done
}

curve_data() {
    start_seven empty
    register_users 20
    template_product
    template_order
    measure_data_point 0
    stop_seven

    start_seven orders
    register_users 20
    template_product
    template_order
    local t0
    t0=$(date +%s)
    seed_orders "$N_ORDERS"
    figure data "$N_ORDERS" "bulk seed (s)" "$(($(date +%s) - t0))"
    figure data "$N_ORDERS" "database size (MiB)" "$(sql -c "SELECT pg_database_size(current_database()) / 1048576")"
    explain_hot_queries
    measure_data_point "$N_ORDERS"
    stop_seven
}

# Catalog and users: cached product reads/s (a first pass over the catalog, then again) and
# saga throughput with orders spread over every product and user.
measure_catalog_point() { # curve point
    local curve=$1 point=$2 name=$SHOP_NAMESPACE products=$3
    load "$name-get1" --mode get-product --product-ids "$products" --concurrency 64 --duration "$CURVE_SECONDS" --audit false
    load "$name-get2" --mode get-product --product-ids "$products" --concurrency 64 --duration "$CURVE_SECONDS" --audit false
    figure "$curve" "$point" "product GET/s, first pass" "$(j "$name-get1" .succeeded_per_sec)"
    figure "$curve" "$point" "product GET/s, again" "$(j "$name-get2" .succeeded_per_sec)"
    figure "$curve" "$point" "product GET p99, again (ms)" "$(j "$name-get2" .http_latency.p99_ms)"
    load "$name-saturation" --tokens "$OUT/tokens" --product-ids "$products" --concurrency "$CONCURRENCY" --duration "$CURVE_SECONDS" --decline-pct 5 --out-of-stock-pct 5
    figure "$curve" "$point" "completed sagas/s at saturation" "$(j "$name-saturation" .completed_sagas_per_sec)"
    figure "$curve" "$point" "saga p99 at saturation (ms)" "$(j "$name-saturation" .saga_latency.p99_ms)"
    check_run "$name-saturation"
}

curve_catalog_users_backlog() {
    local i
    # 20 products, 20 users: the base of both curves.
    start_seven base
    register_users 20
    for i in $(seq 1 20); do template_product; echo "$TEMPLATE_PRODUCT"; done >"$OUT/products"
    measure_catalog_point catalog 20 "$OUT/products"
    stop_seven

    # 100,000 products, the backlog on the way: inventory is stopped while the products
    # relay publishes their events (the queue's message TTL raised to an hour, else those
    # waiting longer than a minute would be dead-lettered, as designed).
    start_seven catalog SHOP_MESSAGE_TTL_MS=3600000
    register_users 20
    template_product
    kill -TERM "${PID_OF[inventory]}"
    wait "${PID_OF[inventory]}" 2>/dev/null || true
    seed_products "$N_PRODUCTS"
    log "waiting for the products relay to publish every event"
    local t0 waiting
    t0=$(date +%s.%N)
    until [[ $(sql -c "SELECT count(*) FROM products.outbox WHERE sent_at IS NULL") == 0 ]]; do sleep 0.5; done
    figure backlog "$N_PRODUCTS" "relay publish (events/s)" "$(awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$N_PRODUCTS" 'BEGIN { printf "%.0f", n / (b - a) }')"
    waiting=$(rabbitmqctl -q list_queues name messages | awk -v q="$SHOP_NAMESPACE.inventory" '$1 == q { print $2 }')
    figure backlog "$N_PRODUCTS" "messages waiting" "$waiting"
    log "$waiting messages wait for inventory; starting it"
    start_program inventory
    local pid=${PID_OF[inventory]} max=0 r known start now
    start=$(date +%s.%N)
    echo "seconds stock_rows rss_kib" >"$OUT/backlog.txt"
    for _ in $(seq 1 2400); do
        now=$(date +%s.%N)
        r=$(rss_kib "$pid")
        ((r > max)) && max=$r
        known=$(sql -c "SELECT count(*) FROM inventory.stock")
        awk -v a="$start" -v b="$now" -v k="$known" -v r="$r" 'BEGIN { printf "%.2f %d %d\n", b - a, k, r }' >>"$OUT/backlog.txt"
        ((known >= N_PRODUCTS + 1)) && break
        sleep 0.25
    done
    local took
    took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    figure backlog "$N_PRODUCTS" "drain (s)" "$took"
    figure backlog "$N_PRODUCTS" "drain (events/s)" "$(awk -v n="$N_PRODUCTS" -v t="$took" 'BEGIN { printf "%.0f", n / t }')"
    figure backlog "$N_PRODUCTS" "inventory RSS max while draining (MiB)" "$(mib "$max")"
    # Idle after the drain: what stays resident.
    sleep 3
    figure backlog "$N_PRODUCTS" "inventory RSS after (MiB)" "$(mib "$(rss_kib "$pid")")"
    figure backlog "$N_PRODUCTS" "dead letters" "$(rabbitmqctl -q list_queues name messages | awk -v q="$SHOP_NAMESPACE.inventory.dlq" '$1 == q { print $2 }')"
    measure_catalog_point catalog "$N_PRODUCTS" "$OUT/products"
    stop_seven

    # 10,000 users with sessions.
    start_seven users
    register_users 20
    for i in $(seq 1 20); do template_product; echo "$TEMPLATE_PRODUCT"; done >"$OUT/products"
    seed_users $((N_USERS - 20))
    figure users "$N_USERS" "sessions in Redis" "$(redis-cli -h 127.0.0.1 --scan --pattern "$SHOP_NAMESPACE:session:*" | wc -l)"
    measure_catalog_point users "$N_USERS" "$OUT/products"
    stop_seven
}

# Warns when a run left an order unsettled or the audit found something.
check_run() {
    local u v
    u=$(j "$1" .unsettled) v=$(j "$1" '.audit.violations | length')
    if [[ $u != 0 || $v != 0 ]]; then
        echo "  $1: $u unsettled, $v audit violation(s)" >>"$OUT/failures.txt"
    fi
}

curves_summary() {
    {
        echo
        echo "== how cost grows ($(date -u '+%Y-%m-%d %H:%M UTC'); seven processes; each measured run ${CURVE_SECONDS} s)"
        echo "-- concurrency (closed-loop clients; 5% declined, 5% out of stock)"
        printf '  %-8s %14s %12s %12s %20s\n' clients "sagas/s" "saga p50" "saga p99" "POST p99 (ms)"
        for c in 1 4 16 64 256; do
            printf '  %-8s %14s %12s %12s %20s\n' "$c" "$(num "$(fig concurrency "$c" "completed sagas/s")")" \
                "$(ms "$(fig concurrency "$c" "saga p50 (ms)")")" "$(ms "$(fig concurrency "$c" "saga p99 (ms)")")" \
                "$(ms "$(fig concurrency "$c" "POST /api/orders p99 (ms)")")"
        done
        echo "-- data: an empty database against $N_ORDERS orders (bulk seed $(fig data "$N_ORDERS" "bulk seed (s)") s, database $(fig data "$N_ORDERS" "database size (MiB)") MiB)"
        printf '  %-40s %12s %12s %8s\n' figure "empty" "$N_ORDERS" "x"
        awk -F'\t' -v big="$N_ORDERS" '$1 == "data" && $2 == "0" { e[$3] = $4; order[++n] = $3 } $1 == "data" && $2 == big { b[$3] = $4 }
            END { for (i = 1; i <= n; i++) { k = order[i]; printf "  %-40s %12.2f %12.2f %8s\n", k, e[k], b[k], (e[k] > 0 ? sprintf("%.2f", b[k] / e[k]) : "-") } }' "$CURVES"
        echo "   (plans of the hot queries on the seeded database: $OUT/plans.txt)"
        for curve in catalog users; do
            local big=$N_PRODUCTS
            [[ $curve == users ]] && big=$N_USERS
            echo "-- $curve: 20 against $big"
            printf '  %-40s %12s %12s %8s\n' figure 20 "$big" "x"
            awk -F'\t' -v c="$curve" -v big="$big" '$1 == "catalog" && $2 == "20" { e[$3] = $4; order[++n] = $3 } $1 == c && $2 == big { b[$3] = $4 }
                END { for (i = 1; i <= n; i++) { k = order[i]; printf "  %-40s %12.1f %12.1f %8s\n", k, e[k], b[k], (e[k] > 0 ? sprintf("%.2f", b[k] / e[k]) : "-") } }' "$CURVES"
        done
        echo "-- backlog: $N_PRODUCTS product.created events waiting for inventory"
        awk -F'\t' '$1 == "backlog" { printf "  %-40s %12s\n", $3, $4 }' "$CURVES"
        if [[ -s $OUT/failures.txt ]]; then cat "$OUT/failures.txt"; else echo "every order settled and every audit passed"; fi
    } | tee "$OUT/curves.txt"
}

# ---- soak ----
soak() {
    local minutes=$1 rate m p pid
    start_seven soak
    register_users 20
    for _ in $(seq 1 20); do template_product; echo "$TEMPLATE_PRODUCT"; done >"$OUT/products"
    load soak-saturation --tokens "$OUT/tokens" --product-ids "$OUT/products" --concurrency "$CONCURRENCY" --duration "$CURVE_SECONDS" --audit false
    rate=$(awk -v s="$(j soak-saturation .completed_sagas_per_sec)" 'BEGIN { printf "%.0f", s / 2 }')
    log "soak: $minutes minute(s) at $rate orders/s (half of saturation)"
    printf 'minute\tprogram\trss_kib\tfds\tsockets\tpg_connections\tsaga_p99_ms\tpost_p99_ms\tsagas_per_s\n' >"$OUT/soak.tsv"
    for m in $(seq 1 "$minutes"); do
        load "soak-$m" --tokens "$OUT/tokens" --product-ids "$OUT/products" --rate "$rate" --duration 60 --decline-pct 5 --out-of-stock-pct 5 --audit false
        local pg
        pg=$(psql_admin -At -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '${SHOP_DATABASE_URL##*/}'")
        for p in "${PROGRAMS[@]}"; do
            pid=${PID_OF[$p]}
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$p" "$(rss_kib "$pid")" \
                "$(find "/proc/$pid/fd" -mindepth 1 2>/dev/null | wc -l)" \
                "$(find "/proc/$pid/fd" -mindepth 1 -lname 'socket:*' 2>/dev/null | wc -l)" "$pg" \
                "$(j "soak-$m" .saga_latency.p99_ms)" "$(j "soak-$m" .http_latency.p99_ms)" \
                "$(j "soak-$m" .completed_sagas_per_sec)" >>"$OUT/soak.tsv"
        done
        check_run "soak-$m"
    done
    SHOP_LOG=off "$SHOP" audit >"$OUT/soak-audit.txt" 2>&1 && SOAK_AUDIT=passed || SOAK_AUDIT="FAILED (see $OUT/soak-audit.txt)"
    stop_seven
    {
        echo
        echo "== soak: $minutes minute(s) at $rate orders/s, seven processes ($(date -u '+%Y-%m-%d %H:%M UTC'))"
        awk -F'\t' -v last="$minutes" 'NR > 1 && $2 == "orders" { printf "  minute %-3s saga p99 %8.2f ms   POST p99 %8.2f ms   %6.1f sagas/s   PostgreSQL connections %s\n", $1, $7, $8, $9, $6 }' "$OUT/soak.tsv"
        printf '  %-14s %22s %22s %22s\n' program "RSS MiB first/last" "fds first/last" "sockets first/last"
        awk -F'\t' -v last="$minutes" 'NR > 1 && $1 == 1 { r[$2] = $3; f[$2] = $4; s[$2] = $5; order[++n] = $2 }
            NR > 1 && $1 == last { R[$2] = $3; F[$2] = $4; S[$2] = $5 }
            END { for (i = 1; i <= n; i++) { p = order[i]; printf "  %-14s %22s %22s %22s\n", p, sprintf("%.1f / %.1f", r[p] / 1024, R[p] / 1024), f[p] " / " F[p], s[p] " / " S[p] } }' "$OUT/soak.tsv"
        echo "  audit at the end: $SOAK_AUDIT"
        if [[ -s $OUT/failures.txt ]]; then cat "$OUT/failures.txt"; fi
    } | tee "$OUT/soak.txt"
}

# One SVG of every curve measured (matplotlib, in target/bench-venv, installed on first use).
chart() {
    local venv=target/bench-venv
    if [[ ! -x $venv/bin/python ]]; then
        log "installing matplotlib into $venv (once)"
        python3 -m venv "$venv" && "$venv/bin/pip" install -q 'matplotlib>=3.7,<4' >&2
    fi
    "$venv/bin/python" scripts/bench_chart.py "$OUT" target/bench-curves.svg &&
        log "chart: target/bench-curves.svg (copy it to docs/bench-curves.svg for the README)"
}
