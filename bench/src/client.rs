//! The harness's clients, as a platform and an OBS page would be: a publisher over HTTP/1.1
//! keep-alive, and a widget over WebSocket, both with TCP_NODELAY so that no small frame waits
//! for Nagle's algorithm.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::Error;

async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, Error> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// One keep-alive connection that posts alerts, one at a time.
pub struct Publisher {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    authorization: String,
}

/// What `POST /publish` answered.
pub struct Published {
    pub status: u16,
    /// The alert's id on 202.
    pub id: Option<String>,
}

#[derive(Deserialize)]
struct PublishAnswer {
    id: String,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, publish_key: &str) -> Result<Self, Error> {
        let tcp = connect_tcp(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // Ends when the sender is dropped and the connection closes.
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
            authorization: format!("Bearer {publish_key}"),
        })
    }

    pub async fn publish(&mut self, body: String) -> Result<Published, Error> {
        self.post("/publish", body).await
    }

    /// Posts `body` to `path` (`/broadcast`): the status, and the id it answered on 202.
    pub async fn post(&mut self, path: &str, body: String) -> Result<Published, Error> {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let id = (status == 202)
            .then(|| serde_json::from_slice::<PublishAnswer>(&body).ok())
            .flatten()
            .map(|a| a.id);
        Ok(Published { status, id })
    }
}

/// The body of an alert for `receiver`, stamped with `t`, the harness's clock in µs when it was
/// meant to be published, so the widget that gets it can tell its latency.
pub fn alert_body(receiver: &str, t: u64) -> String {
    format!(
        r#"{{"receiver":"{receiver}","kind":"donation","from":"bench","amount":{{"value":"10.50","currency":"BRL"}},"message":"A benchmark alert of ordinary length, with a few words.","duration_ms":1000,"data":{{"t":{t}}}}}"#
    )
}

/// A subscriber of broadcast topics.
pub struct Subscriber {
    ws: WebSocketStream<TcpStream>,
}

impl Subscriber {
    pub async fn connect(addr: SocketAddr, topics: &str, token: &str) -> Result<Self, Error> {
        let tcp = connect_tcp(addr).await?;
        let url = format!("ws://{addr}/ws/topics?topics={topics}&token={token}");
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
        Ok(Self { ws })
    }

    /// The `n` of the next message's data (`{"n":..}`, first in it), without parsing the
    /// frame whole: the harness reads every delivery; `None` once the node closed.
    pub async fn next_n(&mut self) -> Result<Option<u64>, Error> {
        const AT: &str = r#""data":{"n":"#;
        while let Some(message) = self.ws.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let Some(at) = text.find(AT) else {
                continue;
            };
            let digits: String = text[at + AT.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return Ok(digits.parse().ok());
        }
        Ok(None)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A widget's read buffer: room for a few alert frames at once.
const READ_BUFFER: usize = 4 * 1024;

/// One widget's WebSocket.
pub struct Widget {
    ws: WebSocketStream<TcpStream>,
}

/// An alert as a widget got it.
pub struct Alert {
    pub id: String,
    /// The stamp of [`alert_body`].
    pub t: Option<u64>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    alert: Option<AlertFrame<'a>>,
}

#[derive(Deserialize)]
struct AlertFrame<'a> {
    id: &'a str,
    #[serde(default)]
    data: Option<Stamp>,
}

#[derive(Deserialize)]
struct Stamp {
    t: Option<u64>,
}

impl Widget {
    pub async fn connect(addr: SocketAddr, receiver: &str, token: &str) -> Result<Self, Error> {
        let tcp = connect_tcp(addr).await?;
        let url = format!("ws://{addr}/ws/{receiver}?token={token}");
        // tungstenite zero-fills its read buffer before every read, 128 KiB by default: that was
        // a tenth of the harness's CPU. The node's frames are a few hundred bytes.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
        Ok(Self { ws })
    }

    /// The next alert; `None` once the node closed the socket.
    pub async fn next_alert(&mut self) -> Result<Option<Alert>, Error> {
        while let Some(message) = self.ws.next().await {
            let Message::Text(text) = message? else {
                // Pings are answered by tungstenite itself.
                continue;
            };
            let frame: Frame = serde_json::from_str(&text)?;
            match (frame.kind, frame.alert) {
                ("alert", Some(alert)) => {
                    return Ok(Some(Alert {
                        id: alert.id.to_owned(),
                        t: alert.data.and_then(|d| d.t),
                    }))
                }
                ("error", _) => return Err(format!("the node sent an error: {text}").into()),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Says `started` and `done` for an alert at once, in one write, as a widget whose alerts
    /// take no time to show would.
    pub async fn show(&mut self, id: &str) -> Result<(), Error> {
        self.ws
            .feed(Message::text(format!(
                r#"{{"type":"started","id":"{id}"}}"#
            )))
            .await?;
        self.ws
            .feed(Message::text(format!(r#"{{"type":"done","id":"{id}"}}"#)))
            .await?;
        self.ws.flush().await?;
        Ok(())
    }

    /// Waits for any frame (the node's hello), so the widget is known to be connected.
    pub async fn hello(&mut self) -> Result<(), Error> {
        match self.ws.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
            None => Err("the node closed the socket before its hello".into()),
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
