//! A gRPC unary caller on the `h2` crate that hands each request to the connection whole:
//! HEADERS and the one DATA frame carrying the message and END_STREAM, written together.
//!
//! tonic's client (hyper's HTTP/2 client) writes a unary request in three writes: HEADERS, then
//! DATA, then an empty DATA frame with END_STREAM, because a new stream gets no flow-control
//! capacity until its HEADERS are on the wire. A server then wakes twice per request.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// One HTTP/2 connection to a gRPC server.
#[derive(Clone)]
pub struct Unary {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl Unary {
    /// Connects to `addr` (host:port) over plain TCP (HTTP/2 with prior knowledge).
    pub async fn connect(addr: &str) -> anyhow::Result<Unary> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Unary {
            send,
            authority: addr.to_string(),
        })
    }

    /// Calls `path` (`/package.Service/Method`) with `req`; the decoded answer, or the
    /// grpc-status and message as an error.
    pub async fn call<Req: Message, Res: Message + Default>(
        &self,
        path: &str,
        req: &Req,
    ) -> anyhow::Result<Res> {
        let len = req.encoded_len();
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0);
        body.put_u32(u32::try_from(len)?);
        req.encode(&mut body)?;
        let request = http::Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body.freeze(), true)?;
        let response = response.await?;
        let (head, mut recv) = response.into_parts();
        if head.status != http::StatusCode::OK {
            anyhow::bail!("HTTP status {}", head.status);
        }
        if let Some(code) = grpc_status(&head.headers) {
            anyhow::bail!("grpc-status {code}");
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            recv.flow_control().release_capacity(chunk.len())?;
            data.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await?.unwrap_or_default();
        if let Some(code) = grpc_status(&trailers) {
            anyhow::bail!("grpc-status {code}");
        }
        if data.len() < 5 {
            anyhow::bail!("short gRPC message ({} bytes)", data.len());
        }
        Ok(Res::decode(&data[5..])?)
    }
}

/// A non-OK grpc-status with its message, if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status")?.to_str().ok()?;
    (code != "0").then(|| {
        let msg = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default();
        format!("{code}: {msg}")
    })
}
