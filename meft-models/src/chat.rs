//! Chat templates applied in Rust (no Jinja): ChatML (SmolLM2, Qwen) and the Llama-2/Mistral
//! `[INST]` form.
//!
//! Selection rule ([`ChatTemplate::detect`]), from the model's Jinja template text (GGUF
//! `tokenizer.chat_template` or HF `tokenizer_config.json` `chat_template`):
//! 1. it mentions `<|im_start|>` → ChatML. If the template contains a literal system turn
//!    (`<|im_start|>system\n` followed by plain text up to `<|im_end|>`), that text becomes the
//!    default system prompt used when the conversation does not start with a system message
//!    (SmolLM2 does this).
//! 2. it mentions `[INST]` → `[INST]` form.
//! 3. otherwise (or no template at all) → no chat template; `--chat` is refused.
//!
//! Rendered forms (`⏎` = newline), always ending with the prompt for the assistant's reply:
//! - ChatML: `<|im_start|>{role}⏎{content}<|im_end|>⏎` per message, then `<|im_start|>assistant⏎`.
//! - `[INST]`: `{bos}[INST] {user} [/INST]` per user turn, an assistant turn as ` {content}{eos}`; a
//!   system message is folded into the first user turn as `<<SYS>>⏎{system}⏎<</SYS>>⏎⏎{user}`.

/// Who speaks. The one role type of the workspace: datasets (meft-eval) deserialise it from
/// the usual lowercase names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The human.
    User,
    /// The model.
    Assistant,
    /// A tool's output (ChatML role `tool`; the `[INST]` form writes it as a user turn).
    Tool,
}

impl Role {
    /// The lowercase name (`system`, `user`, `assistant`, `tool`), as ChatML writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// Parses [`Self::name`]'s forms.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::System, Self::User, Self::Assistant, Self::Tool].into_iter().find(|r| r.name() == name)
    }
}

/// One chat turn (also a dataset's chat message).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }
}

/// A chat format known to meft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML with an optional default system prompt.
    ChatMl {
        /// System prompt inserted when the conversation has none.
        default_system: Option<String>,
    },
    /// Llama-2 / Mistral `[INST]` form.
    Inst {
        /// Text of the BOS token (`<s>`), written before each user turn.
        bos: String,
        /// Text of the EOS token (`</s>`), written after each assistant turn.
        eos: String,
    },
}

impl ChatTemplate {
    /// Picks the template from the model's Jinja text (see the module doc for the rule).
    ///
    /// `bos`/`eos` are the token texts the `[INST]` form writes.
    pub fn detect(jinja: Option<&str>, bos: &str, eos: &str) -> Option<Self> {
        let jinja = jinja?;
        if jinja.contains("<|im_start|>") {
            Some(Self::ChatMl { default_system: default_system(jinja) })
        } else if jinja.contains("[INST]") {
            Some(Self::Inst { bos: bos.to_string(), eos: eos.to_string() })
        } else {
            None
        }
    }

    /// The same format without a default system prompt: a conversation without a system
    /// message then has no system turn at all.
    pub fn without_default_system(&self) -> Self {
        match self {
            Self::ChatMl { .. } => Self::ChatMl { default_system: None },
            other => other.clone(),
        }
    }

    /// Short name for `meft info`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ChatMl { .. } => "chatml",
            Self::Inst { .. } => "inst",
        }
    }

    /// The assistant's `reply` followed by the end-of-turn marker, i.e. what follows
    /// [`ChatTemplate::render`] in a training sequence: ChatML `{reply}<|im_end|>⏎`, `[INST]`
    /// ` {reply}{eos}` (the same text `render` writes for an assistant turn).
    pub fn completion(&self, reply: &str) -> String {
        match self {
            Self::ChatMl { .. } => format!("{reply}<|im_end|>\n"),
            Self::Inst { eos, .. } => format!(" {}{eos}", reply.trim()),
        }
    }

    /// Renders the conversation followed by the assistant prompt.
    pub fn render(&self, messages: &[Message]) -> String {
        match self {
            Self::ChatMl { default_system } => render_chatml(messages, default_system.as_deref()),
            Self::Inst { bos, eos } => render_inst(messages, bos, eos),
        }
    }
}

/// The literal system prompt in a ChatML Jinja template, if there is one.
fn default_system(jinja: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system\n";
    let start = jinja.find(OPEN)? + OPEN.len();
    let rest = &jinja[start..];
    let text = &rest[..rest.find("<|im_end|>")?];
    let literal = !text.is_empty() && !text.contains(['\'', '"', '{', '}', '+']);
    literal.then(|| text.to_string())
}

fn render_chatml(messages: &[Message], default_system: Option<&str>) -> String {
    let mut out = String::new();
    let has_system = messages.first().is_some_and(|m| m.role == Role::System);
    if let (false, Some(system)) = (has_system, default_system) {
        out.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
    }
    for m in messages {
        out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.name(), m.content));
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

fn render_inst(messages: &[Message], bos: &str, eos: &str) -> String {
    let mut out = String::new();
    let mut system: Option<&str> = None;
    for m in messages {
        match m.role {
            Role::System => system = Some(&m.content),
            Role::User | Role::Tool => {
                let user = match system.take() {
                    Some(sys) => format!("<<SYS>>\n{sys}\n<</SYS>>\n\n{}", m.content),
                    None => m.content.clone(),
                };
                out.push_str(&format!("{bos}[INST] {} [/INST]", user.trim()));
            }
            Role::Assistant => out.push_str(&format!(" {}{eos}", m.content.trim())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";

    #[test]
    fn smollm2_chatml_with_default_system() {
        let t = ChatTemplate::detect(Some(SMOLLM2), "", "").unwrap();
        let text = t.render(&[Message::user("Hi")]);
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let own = [Message { role: Role::System, content: "Be brief.".into() }, Message::user("Hi")];
        assert!(t.render(&own).starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user"));
        assert_eq!(t.completion("Hello"), "Hello<|im_end|>\n");
    }

    #[test]
    fn chatml_without_literal_system() {
        let jinja = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'}}";
        assert_eq!(ChatTemplate::detect(Some(jinja), "", ""), Some(ChatTemplate::ChatMl { default_system: None }));
    }

    #[test]
    fn inst_form() {
        let t = ChatTemplate::detect(Some("{{ bos_token + '[INST] ' + m + ' [/INST]' }}"), "<s>", "</s>").unwrap();
        let msgs = [
            Message { role: Role::System, content: "Sys".into() },
            Message::user("Q1"),
            Message { role: Role::Assistant, content: "A1".into() },
            Message::user("Q2"),
        ];
        assert_eq!(t.render(&msgs), "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nQ1 [/INST] A1</s><s>[INST] Q2 [/INST]");
        assert_eq!(t.completion("A2"), " A2</s>");
        assert_eq!(ChatTemplate::detect(Some("{{ messages }}"), "", ""), None);
        assert_eq!(ChatTemplate::detect(None, "", ""), None);
    }
}
