//! Pure data and translation for OptiRoute: no I/O, no async runtime.
//!
//! - [`openai`]: the canonical chat-completions types (OpenAI's wire format).
//! - [`anthropic`], [`huggingface`]: wire types of other providers and translation to/from canonical.
//! - [`sse`]: incremental Server-Sent Events decoding and encoding.
//! - [`usage`], [`pricing`]: token counting and money in integer micro-dollars.

pub mod anthropic;
pub mod huggingface;
mod open_object;
pub mod openai;
pub mod pricing;
pub mod sse;
pub mod translate;
pub mod usage;
