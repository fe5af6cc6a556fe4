//! An HTTP/1.1 proxy between the S3 client and the real server, which logs
//! every request and injects faults on the ones a rule matches: an error
//! status without forwarding, a stall, forwarding and then dropping the
//! answer (so the request landed but the client must retry), or holding a
//! request or its answer until the test releases it. It can also
//! strip the conditional headers (`If-Match`, `If-None-Match`) from every
//! request, so the server behaves like a store that ignores them.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What to do with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer this status (500, 503, ...) with an S3 error body; the server
    /// never sees the request.
    Status(u16),
    /// Never answer; the client's attempt timeout must fire.
    Stall,
    /// Forward it, then close the connection instead of answering: the
    /// request took effect, the client saw a broken connection.
    ForwardThenDrop,
    /// Hold it until [`FaultProxy::release`], then forward it.
    Hold,
    /// Forward it and read the server's answer, then hold that answer until
    /// [`FaultProxy::release`]: the request took effect at once, the client
    /// learns of it later (a slow answer).
    HoldAnswer,
}

/// A fault for the next `times` requests whose method is `method` and whose
/// target (path and query) contains `contains`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The HTTP method, e.g. `PUT`.
    pub method: &'static str,
    /// A part of the request target (path and query).
    pub contains: String,
    /// What to do.
    pub action: Action,
    /// How many matching requests it applies to.
    pub times: usize,
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The HTTP method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The action taken, `None` when forwarded untouched.
    pub fault: Option<Action>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    /// The requests whose answer reached the client, in that order.
    answered: Vec<Seen>,
}

/// A running proxy; it stops with the test's runtime.
#[derive(Clone)]
pub struct FaultProxy {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    state: Arc<Mutex<State>>,
    held: Arc<Semaphore>,
    strip: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let proxy = Self {
            port,
            state,
            held: Arc::new(Semaphore::new(0)),
            strip: Arc::new(Mutex::new(Vec::new())),
        };
        let (accepting, upstream) = (proxy.clone(), upstream.to_owned());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (proxy, upstream) = (accepting.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = proxy.serve(client, &upstream).await;
                });
            }
        });
        proxy
    }

    /// The proxy as an S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Add a fault rule; the first matching rule with `times` left applies.
    pub fn add(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    /// Let `count` held requests through.
    pub fn release(&self, count: usize) {
        self.held.add_permits(count);
    }

    /// Drop every rule.
    pub fn clear_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Forget the requests seen (and answered) so far.
    pub fn reset_log(&self) {
        let mut state = self.state.lock().unwrap();
        state.seen.clear();
        state.answered.clear();
    }

    /// The requests whose answer the client received since the last reset,
    /// in the order the answers were sent.
    pub fn answered(&self) -> Vec<Seen> {
        self.state.lock().unwrap().answered.clone()
    }

    /// Drop the headers named `names` (case-insensitive, e.g. `If-Match`,
    /// `If-None-Match`) from every forwarded request, so the server sees
    /// unconditional requests: a store that ignores those conditions. An
    /// empty list forwards headers untouched again.
    pub fn strip_headers(&self, names: &[&str]) {
        *self.strip.lock().unwrap() = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    }

    /// The requests seen since the last reset.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn decide(&self, method: &str, target: &str) -> Option<Action> {
        let mut state = self.state.lock().unwrap();
        let action = state
            .rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && target.contains(&r.contains))
            .map(|rule| {
                rule.times -= 1;
                rule.action
            });
        state.seen.push(Seen {
            method: method.to_owned(),
            target: target.to_owned(),
            fault: action,
        });
        action
    }

    async fn serve(&self, client: TcpStream, upstream: &str) -> std::io::Result<()> {
        let (read, mut write) = client.into_split();
        let mut client_in = BufReader::new(read);
        let mut server: Option<(BufReader<tokio::net::tcp::OwnedReadHalf>, _)> = None;
        loop {
            let Some(head) = read_head(&mut client_in).await? else {
                return Ok(());
            };
            let (method, target) = {
                let mut parts = head
                    .lines
                    .first()
                    .map(|l| l.split(' '))
                    .into_iter()
                    .flatten();
                (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                )
            };
            if head
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            {
                write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            let body = read_body(&mut client_in, &head, false).await?;
            let decided = self.decide(&method, &target);
            let seen = Seen {
                method: method.clone(),
                target: target.clone(),
                fault: decided,
            };
            match decided {
                Some(Action::Status(status)) => {
                    let xml = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the test proxy</Message></Error>",
                        if status == 503 {
                            "SlowDown"
                        } else {
                            "InternalError"
                        }
                    );
                    let answer = format!(
                        "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                        xml.len()
                    );
                    write.write_all(answer.as_bytes()).await?;
                    self.state.lock().unwrap().answered.push(seen);
                    continue;
                }
                Some(Action::Stall) => {
                    // Hold the connection until the client gives up on it.
                    let mut sink = Vec::new();
                    let _ = client_in.read_to_end(&mut sink).await;
                    return Ok(());
                }
                action => {
                    if action == Some(Action::Hold) {
                        self.held.acquire().await.expect("open").forget();
                    }
                    if server.is_none() {
                        let stream = TcpStream::connect(upstream).await?;
                        let (r, w) = stream.into_split();
                        server = Some((BufReader::new(r), w));
                    }
                    let (server_in, server_out) = server.as_mut().expect("connected");
                    let strip = self.strip.lock().unwrap().clone();
                    let mut request = Vec::new();
                    for (i, line) in head.lines.iter().enumerate() {
                        let name = line.split(':').next().unwrap_or_default();
                        let name = name.trim().to_ascii_lowercase();
                        if i > 0 && (name == "expect" || strip.contains(&name)) {
                            continue;
                        }
                        request.extend_from_slice(line.as_bytes());
                        request.extend_from_slice(b"\r\n");
                    }
                    request.extend_from_slice(b"\r\n");
                    request.extend_from_slice(&body);
                    server_out.write_all(&request).await?;
                    let response = loop {
                        let head = read_head(server_in).await?.ok_or_else(|| {
                            std::io::Error::other("the server closed the connection")
                        })?;
                        if !head.lines[0].contains(" 100 ") {
                            break head;
                        }
                    };
                    let body = read_body(server_in, &response, method == "HEAD").await?;
                    if action == Some(Action::ForwardThenDrop) {
                        return Ok(());
                    }
                    if action == Some(Action::HoldAnswer) {
                        self.held.acquire().await.expect("open").forget();
                    }
                    let mut answer = Vec::new();
                    for line in &response.lines {
                        answer.extend_from_slice(line.as_bytes());
                        answer.extend_from_slice(b"\r\n");
                    }
                    answer.extend_from_slice(b"\r\n");
                    answer.extend_from_slice(&body);
                    write.write_all(&answer).await?;
                    self.state.lock().unwrap().answered.push(seen);
                }
            }
        }
    }
}

struct Head {
    lines: Vec<String>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.lines.iter().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    input: &mut R,
) -> std::io::Result<Option<Head>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(Head { lines }));
        }
        lines.push(line);
    }
}

/// The message body, raw (chunk framing kept, so it is forwarded as is).
async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    input: &mut R,
    head: &Head,
    head_request: bool,
) -> std::io::Result<Vec<u8>> {
    let status = head.lines[0].split(' ').nth(1).unwrap_or_default();
    if head_request || status == "204" || status == "304" {
        return Ok(Vec::new());
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut raw = Vec::new();
        loop {
            let mut size_line = String::new();
            input.read_line(&mut size_line).await?;
            raw.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            let mut chunk = vec![0; size + 2];
            input.read_exact(&mut chunk).await?;
            raw.extend_from_slice(&chunk);
            if size == 0 {
                return Ok(raw);
            }
        }
    }
    let length: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    input.read_exact(&mut body).await?;
    Ok(body)
}
