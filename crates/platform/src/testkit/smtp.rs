//! A real SMTP server for tests: aiosmtpd (PyPI), no code of ours speaking SMTP. It keeps
//! each message it accepts in a Maildir that [`Smtpd::mail`] reads back; a recipient at
//! `refused.test` is refused for good (550); [`Smtpd::start_with_login`] requires AUTH. The
//! server is a child process that can be stopped and started again on the same port, as a
//! mail server that goes away.
//!
//! aiosmtpd is installed on first use into `target/smtp-venv` ([`super::python_with`]), or
//! taken from `SHOP_TEST_SMTPD_PYTHON` (a Python that can `import aiosmtpd`).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::eventually;

/// The aiosmtpd release the tests run against.
pub const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// One message as the server received it.
#[derive(Clone, Debug)]
pub struct Mail {
    /// The envelope recipient (what the server was asked to deliver to).
    pub to: String,
    /// Header `To`.
    pub to_header: String,
    pub message_id: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// An aiosmtpd server on `127.0.0.1:port`, removed (process and Maildir) on drop.
pub struct Smtpd {
    pub port: u16,
    /// `user:password` the server requires, if any.
    login: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Smtpd {
    /// Starts the server on `port` and waits until it accepts connections.
    pub async fn start(port: u16) -> Smtpd {
        Smtpd::start_as(port, None).await
    }

    /// Starts a server that takes mail only after AUTH as `user` with `password`.
    pub async fn start_with_login(port: u16, user: &str, password: &str) -> Smtpd {
        Smtpd::start_as(port, Some(format!("{user}:{password}"))).await
    }

    async fn start_as(port: u16, login: Option<String>) -> Smtpd {
        let dir =
            std::env::temp_dir().join(format!("shop-smtpd-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join("maildir").join(sub)).expect("creating the Maildir");
        }
        std::fs::write(dir.join("smtp_sink.py"), include_str!("smtp_sink.py"))
            .expect("writing the handler");
        let mut s = Smtpd {
            port,
            login,
            dir,
            child: None,
        };
        s.resume().await;
        s
    }

    /// `smtp://127.0.0.1:<port>`, as `SHOP_SMTP_URL` takes it.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its port then refuses connections); the messages stay.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again (after [`Smtpd::pause`]).
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the SMTP server is running");
        let log = std::fs::File::create(self.dir.join("smtpd.log")).expect("creating the log");
        let mut cmd = Command::new(python());
        cmd.arg(self.dir.join("smtp_sink.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--maildir")
            .arg(self.dir.join("maildir"));
        if let Some(login) = &self.login {
            cmd.arg("--login").arg(login);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting aiosmtpd");
        self.child = Some(child);
        let port = self.port;
        let log = self.dir.join("smtpd.log");
        eventually(
            &format!("aiosmtpd accepting on {port} (log: {})", log.display()),
            super::WAIT,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Every message received so far, in no particular order.
    pub fn mail(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join("maildir").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let raw = std::fs::read(entry.path()).expect("reading a message");
                out.push(parse(&raw));
            }
        }
        out
    }

    /// Waits until at least `n` messages arrived; returns them all.
    pub async fn wait_mail(&self, n: usize, deadline: Duration) -> Vec<Mail> {
        super::eventually_some(&format!("{n} messages received"), deadline, || async {
            let mail = self.mail();
            (mail.len() >= n).then_some(mail)
        })
        .await
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parse(raw: &[u8]) -> Mail {
    use mailparse::MailHeaderMap as _;
    let m = mailparse::parse_mail(raw).expect("a message the server kept parses");
    let header = |name: &str| m.headers.get_first_value(name).unwrap_or_default();
    let mut text = String::new();
    let mut html = String::new();
    for part in m.parts() {
        match part.ctype.mimetype.as_str() {
            "text/plain" => text = part.get_body().expect("a text part decodes"),
            "text/html" => html = part.get_body().expect("an HTML part decodes"),
            _ => {}
        }
    }
    Mail {
        to: header("X-RcptTo"),
        to_header: header("To"),
        message_id: header("Message-ID"),
        subject: header("Subject"),
        text,
        html,
    }
}

/// A Python with aiosmtpd: `SHOP_TEST_SMTPD_PYTHON`, or the tests' own virtualenv.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SHOP_TEST_SMTPD_PYTHON") {
        return p.into();
    }
    super::python_with("smtp-venv", AIOSMTPD, "aiosmtpd")
}
