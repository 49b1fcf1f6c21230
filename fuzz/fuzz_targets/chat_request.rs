//! Chat request parsing. Without features: the canonical `ChatRequest` (serde) parse of arbitrary
//! bytes, its helpers, and a serialize/parse round trip that must give the same request back.
//! With `--features gateway`: also the gateway's `optiroute::http::parse_chat_request`, which must
//! agree with the plain parse whenever it accepts, and must answer 400 whenever it rejects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optiroute_protocol::openai::{ChatRequest, Content};

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<ChatRequest>(data);
    if let Ok(req) = &parsed {
        check_request(req);
    }
    #[cfg(feature = "gateway")]
    check_gateway(data, &parsed);
});

fn check_request(req: &ChatRequest) {
    let _ = (req.is_stream(), req.include_usage(), req.output_cap(), req.wants_json());
    let _ = (req.has_tools(), req.has_images(), req.last_user_text());
    for m in &req.messages {
        let text_parts = match &m.content {
            Some(Content::Parts(parts)) => parts.iter().filter(|p| p.as_text().is_some()).count(),
            _ => 0,
        };
        // `text` joins text parts with '\n'; `text_len` counts the parts' bytes only.
        assert_eq!(m.text().len(), m.text_len() + text_parts.saturating_sub(1), "{m:?}");
    }
    let bytes = serde_json::to_vec(req).expect("a parsed request serializes");
    let back: ChatRequest = serde_json::from_slice(&bytes).expect("a serialized request parses");
    assert_eq!(
        &back,
        req,
        "round trip changed the request: {}",
        String::from_utf8_lossy(&bytes)
    );
}

#[cfg(feature = "gateway")]
fn check_gateway(data: &[u8], plain: &serde_json::Result<ChatRequest>) {
    const MAX_MESSAGES: usize = 64;
    const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];
    match optiroute::http::parse_chat_request(data, MAX_MESSAGES) {
        Ok(req) => {
            // Fixed finding: trailing bytes after the JSON object used to be accepted.
            let plain = plain.as_ref().ok();
            assert_eq!(
                Some(&req),
                plain,
                "gateway accepted what plain serde parses differently"
            );
            assert!(!req.model.trim().is_empty());
            assert!(!req.messages.is_empty() && req.messages.len() <= MAX_MESSAGES);
            assert!(req.messages.iter().all(|m| ROLES.contains(&m.role.as_str())));
            assert!(req.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
            assert!(req.top_p.is_none_or(|p| (0.0..=1.0).contains(&p)));
            assert_ne!(req.output_cap(), Some(0));
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{e:?}");
            assert!(!e.message.is_empty());
        }
    }
}
