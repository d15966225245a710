//! HTTP/1.1 spoken by hand over a `TcpStream`, as wrk does it: a client that owns its
//! connection knows which one a request went over and that nothing is pooled or shared.

use anyhow::{bail, Context};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// The `host:port` of a base address `http://host:port`.
///
/// # Errors
/// When the address is not `http://`.
pub fn address(base: &str) -> anyhow::Result<String> {
    Ok(base
        .strip_prefix("http://")
        .context("the base address must be http://host:port")?
        .trim_end_matches('/')
        .to_owned())
}

/// A keep-alive `GET` of `path` on `address` with a bearer token.
pub fn get(address: &str, path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// Reads one response and its body; `None` when the server closed the connection first.
///
/// # Errors
/// On an I/O error, or a response this reader cannot delimit (chunked, or no status line).
pub async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Option<u16>> {
    buffer.clear();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(head) = parse_head(buffer)? {
            while buffer.len() < head.end + head.body {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Ok(Some(head.status));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// A response head: its status, where it ends and how long the body after it is.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    end: usize,
    body: usize,
}

/// The head at the start of `buffer`, once all of it has arrived. A response without
/// `Content-Length` has no body (a `204`, a `304`): the service streams no response.
fn parse_head(buffer: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..at]).context("a response head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a status line")?;
    let mut body = 0;
    for (name, value) in head.lines().skip(1).filter_map(|line| line.split_once(':')) {
        if name.eq_ignore_ascii_case("content-length") {
            body = value.trim().parse().context("a Content-Length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!(
                "a {} body, which this reader does not delimit",
                value.trim()
            );
        }
    }
    Ok(Some(Head {
        status,
        end: at + 4,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_only_once_it_has_fully_arrived() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n").ok(),
            Some(None)
        );
    }

    #[test]
    fn the_body_length_comes_from_content_length() {
        let head = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 12\r\n\r\n";
        let buffer = format!("{head}{{\"ti");

        let parsed = parse_head(buffer.as_bytes()).ok().flatten();

        assert_eq!(
            parsed,
            Some(Head {
                status: 429,
                end: head.len(),
                body: 12
            })
        );
    }

    #[test]
    fn a_response_without_content_length_has_no_body() {
        let head = "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n";

        let parsed = parse_head(head.as_bytes()).ok().flatten();

        assert_eq!(
            parsed,
            Some(Head {
                status: 204,
                end: head.len(),
                body: 0
            })
        );
    }

    #[test]
    fn a_chunked_body_is_refused() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }
}
