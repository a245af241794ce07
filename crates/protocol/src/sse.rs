//! Server-Sent Events framing for downstream streams.

use bytes::Bytes;

/// One `message` event carrying a JSON-RPC message.
pub fn message_event(json: &str, id: Option<&str>) -> Bytes {
    let mut s = String::with_capacity(json.len() + 40);
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(id);
        s.push('\n');
    }
    s.push_str("event: message\ndata: ");
    s.push_str(json);
    s.push_str("\n\n");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        assert_eq!(
            &message_event("{}", None)[..],
            b"event: message\ndata: {}\n\n"
        );
        assert_eq!(
            &message_event("{}", Some("3"))[..],
            b"id: 3\nevent: message\ndata: {}\n\n"
        );
    }
}
