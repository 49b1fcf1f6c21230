//! The scorer's input: a conversation as (role, text) pairs plus the request's `max_tokens`.

use serde::{Deserialize, Serialize};

/// Who wrote a message. Unknown roles from a wire format map to [`Role::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
    Other,
}

impl Role {
    /// Maps an OpenAI/Anthropic-style role name (`system`, `developer`, `user`, `assistant`, `tool`, ...).
    pub fn parse(name: &str) -> Role {
        match name.trim().to_ascii_lowercase().as_str() {
            "system" | "developer" => Role::System,
            "user" | "human" => Role::User,
            "assistant" | "model" | "ai" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            _ => Role::Other,
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub text: String,
}

/// Token counts measured by the caller (e.g. with tiktoken in the gateway). When absent, scorers that
/// want token-ish counts approximate them from characters and words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub last_user: u32,
    pub context: u32,
}

/// What a scorer sees of a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub tokens: Option<TokenCounts>,
}

impl Conversation {
    /// A single user turn.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        Conversation {
            messages: vec![Message {
                role: Role::User,
                text: prompt.into(),
            }],
            max_tokens: None,
            tokens: None,
        }
    }

    /// Builds a conversation from (role, text) pairs.
    pub fn from_pairs<R: AsRef<str>, T: Into<String>>(pairs: impl IntoIterator<Item = (R, T)>) -> Self {
        Conversation {
            messages: pairs
                .into_iter()
                .map(|(r, t)| Message {
                    role: Role::parse(r.as_ref()),
                    text: t.into(),
                })
                .collect(),
            max_tokens: None,
            tokens: None,
        }
    }

    pub fn with_max_tokens(mut self, max_tokens: Option<u32>) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    pub fn with_tokens(mut self, tokens: Option<TokenCounts>) -> Self {
        self.tokens = tokens;
        self
    }

    /// The text of the last user message ("" when there is none).
    pub fn last_user(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text.as_str())
            .unwrap_or("")
    }

    /// Characters over all messages.
    pub fn context_chars(&self) -> usize {
        self.messages.iter().map(|m| m.text.chars().count()).sum()
    }

    pub fn count_role(&self, role: Role) -> usize {
        self.messages.iter().filter(|m| m.role == role).count()
    }
}
