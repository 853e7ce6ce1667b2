//! Prompt building: an [`Example`] becomes chat messages plus a target reply, rendered by the model's
//! chat template, with a loss mask choice.
//!
//! This crate does not know any template syntax: a [`ChatTemplate`] (implemented for the model's
//! tokenizer template, or for any pair of closures through [`FnTemplate`]) turns messages into the
//! prompt text and a reply into the completion text. Training text is `prompt + completion`; the
//! prompt and completion are tokenised separately so the mask boundary is exact.

use serde::{Deserialize, Serialize};

use crate::example::{ChatMessage, Example, ExpectedCall, Role, ToolExample, ToolExpectation};

/// Renders chat messages in a model's format.
pub trait ChatTemplate {
    /// The conversation `messages`, ending with the marker that starts the assistant's reply
    /// (ChatML `<|im_start|>assistant\n`, Mistral `[/INST]`).
    fn prompt(&self, messages: &[ChatMessage]) -> String;
    /// The assistant's `reply` followed by the end-of-turn marker.
    fn completion(&self, reply: &str) -> String;
}

/// A [`ChatTemplate`] from two closures.
pub struct FnTemplate<P, C> {
    /// Renders the prompt.
    pub prompt: P,
    /// Renders the completion.
    pub completion: C,
}

impl<P, C> ChatTemplate for FnTemplate<P, C>
where
    P: Fn(&[ChatMessage]) -> String,
    C: Fn(&str) -> String,
{
    fn prompt(&self, messages: &[ChatMessage]) -> String {
        (self.prompt)(messages)
    }

    fn completion(&self, reply: &str) -> String {
        (self.completion)(reply)
    }
}

/// Which tokens carry the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossMask {
    /// Prompt and completion (the MEFT authors' default).
    #[default]
    WholeSequence,
    /// The completion only.
    ResponseOnly,
}

impl LossMask {
    /// Per-token weights (1 in the loss, 0 out) for a prompt of `prompt_tokens` followed by a
    /// completion of `completion_tokens`.
    pub fn weights(self, prompt_tokens: usize, completion_tokens: usize) -> Vec<u8> {
        let prompt_weight = match self {
            Self::WholeSequence => 1,
            Self::ResponseOnly => 0,
        };
        let mut weights = vec![prompt_weight; prompt_tokens];
        weights.resize(prompt_tokens + completion_tokens, 1);
        weights
    }
}

/// An example as chat messages and the reply to learn or to compare with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptedExample {
    /// The messages before the reply.
    pub messages: Vec<ChatMessage>,
    /// The reference reply (training target).
    pub target: String,
}

/// Rendered text for training or generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedExample {
    /// The prompt (what generation starts from).
    pub prompt: String,
    /// The completion (target reply plus end-of-turn).
    pub completion: String,
}

/// Messages and target for `example`.
///
/// QA: the question (SQuAD: `Title`, `Context` and `Question` lines), target the first answer;
/// maths: the problem, target the worked solution; tools: a system message listing the function
/// schemas as JSON, the conversation, target the expected calls written as
/// `name(arg=value, ...)` with the first allowed value of each argument (optional ones omitted);
/// instruction: instruction and input separated by a blank line, target the output; chat: all
/// messages but the last, target the last.
pub fn to_prompt(example: &Example) -> PromptedExample {
    let user = |text: String| vec![ChatMessage::new(Role::User, text)];
    match example {
        Example::Qa(e) => {
            let text = match &e.context {
                None => e.question.clone(),
                Some(passage) => {
                    let title = passage.title.as_deref().map(|t| format!("Title: {t}\n")).unwrap_or_default();
                    format!("{title}Context: {}\nQuestion: {}", passage.text, e.question)
                }
            };
            PromptedExample { messages: user(text), target: e.answers.first().cloned().unwrap_or_default() }
        }
        Example::Math(e) => PromptedExample { messages: user(e.question.clone()), target: e.solution.clone() },
        Example::Tool(e) => tool_prompt(e),
        Example::Instruction(e) => {
            let text = match &e.input {
                Some(input) => format!("{}\n\n{input}", e.instruction),
                None => e.instruction.clone(),
            };
            PromptedExample { messages: user(text), target: e.output.clone() }
        }
        Example::Chat(e) => {
            let (last, before) = e.messages.split_last().map_or((None, &[][..]), |(l, b)| (Some(l), b));
            PromptedExample { messages: before.to_vec(), target: last.map(|m| m.content.clone()).unwrap_or_default() }
        }
    }
}

fn tool_prompt(example: &ToolExample) -> PromptedExample {
    let schemas = serde_json::to_string(&example.functions).unwrap_or_default();
    let system = format!(
        "You can call these functions. Reply only with the calls, as [name(arg=value, ...)], or with \
         nothing if none applies.\nFunctions: {schemas}"
    );
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    messages.extend(example.messages.iter().cloned());
    let target = match &example.expected {
        ToolExpectation::Calls(calls) => format!("[{}]", calls.iter().map(render_call).collect::<Vec<_>>().join(", ")),
        ToolExpectation::NoCall | ToolExpectation::AnyCall => String::new(),
    };
    PromptedExample { messages, target }
}

/// `name(arg=value, ...)` with the first allowed value of each argument; an argument whose first
/// allowed value is `""` (BFCL: may be omitted) is left out.
fn render_call(call: &ExpectedCall) -> String {
    let args: Vec<String> = call
        .args
        .iter()
        .filter_map(|(name, allowed)| match allowed.first()? {
            serde_json::Value::String(s) if s.is_empty() => None,
            first => Some(format!("{name}={first}")),
        })
        .collect();
    format!("{}({})", call.name, args.join(", "))
}

/// Renders `example` through `template`.
pub fn render(example: &Example, template: &dyn ChatTemplate) -> RenderedExample {
    let prompted = to_prompt(example);
    RenderedExample { prompt: template.prompt(&prompted.messages), completion: template.completion(&prompted.target) }
}

#[cfg(test)]
mod tests;
