//! TGI (`/generate`) request translation of arbitrary canonical requests, for both chat templates:
//! never panics, rejects only with a client error naming a field, sends exactly the rendered
//! prompt and stop list, and only parameter values TGI accepts.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use optiroute_fuzz::chat_request;
use optiroute_protocol::huggingface::{self, ChatTemplate, MAX_STOP_SEQUENCES};
use optiroute_protocol::translate::stop_list;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(req) = chat_request(&mut u) else { return };
    for template in [ChatTemplate::Plain, ChatTemplate::ChatML] {
        let body = match huggingface::to_request(&req, template) {
            Ok(body) => body,
            Err(e) => {
                assert!(e.is_client_error() && e.field().is_some(), "{e:?}");
                continue;
            }
        };
        let prompt = huggingface::render_prompt(&req, template).expect("to_request rendered it");
        assert_eq!(body["inputs"], Value::from(prompt.as_str()));
        let cue = match template {
            ChatTemplate::Plain => "Assistant:",
            ChatTemplate::ChatML => "<|im_start|>assistant\n",
        };
        assert!(prompt.ends_with(cue), "{prompt:?}");

        let p = &body["parameters"];
        let stops = huggingface::stop_sequences(&req, template);
        let client_stops = stop_list(req.stop.as_ref()).len();
        assert!(stops.len() <= MAX_STOP_SEQUENCES.max(client_stops), "{stops:?}");
        assert!(stops.iter().all(|s| !s.is_empty()));
        match p.get("stop") {
            Some(v) => assert_eq!(v, &Value::from(stops.clone())),
            None => assert!(stops.is_empty()),
        }
        if let Some(max) = p.get("max_new_tokens") {
            assert!(max.as_u64().is_some_and(|m| m >= 1), "{body}");
        }
        assert!(p["do_sample"].is_boolean());
        if let Some(t) = p.get("temperature").and_then(Value::as_f64) {
            assert!(t > 0.0, "{body}");
        }
        if let Some(tp) = p.get("top_p").and_then(Value::as_f64) {
            assert!(tp > 0.0 && tp < 1.0, "{body}");
        }
        if let Some(seed) = p.get("seed") {
            assert!(seed.is_u64(), "{body}");
        }
    }
});
