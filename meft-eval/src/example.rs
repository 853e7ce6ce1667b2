//! Typed examples: what every loader produces and what prompts and metrics consume.
//!
//! Loaders normalise each source format into one of these; the original fields stay in the JSONL
//! cache files. Every example has a stable string `id` (used for splits and to join predictions).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a chat message, and the message: the model crate's chat types, one owner.
pub use meft_models::chat::{Message as ChatMessage, Role};

/// Open-domain or reading-comprehension question answering (NQ-open, TriviaQA, SQuAD, user QA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaExample {
    /// Stable id.
    pub id: String,
    /// The question.
    pub question: String,
    /// Gold answers; any one of them counts as correct. The first is the training target.
    pub answers: Vec<String>,
    /// Passage for reading comprehension (SQuAD); `None` for closed-book QA.
    pub context: Option<Passage>,
}

/// A passage given with a reading-comprehension question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// Article title, when known.
    pub title: Option<String>,
    /// The passage text.
    pub text: String,
}

/// A maths word problem (GSM8K) or competition problem (MATH).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MathExample {
    /// Stable id.
    pub id: String,
    /// The problem statement.
    pub question: String,
    /// A worked solution, used as the training target. GSM8K solutions end with
    /// `The answer is: <n>`; MATH solutions contain `\boxed{...}`.
    pub solution: String,
    /// The gold final answer (a number for GSM8K, a LaTeX expression for MATH).
    pub final_answer: String,
    /// MATH subject (e.g. `algebra`); `None` for GSM8K.
    pub subject: Option<String>,
    /// MATH difficulty (e.g. `Level 3`); `None` for GSM8K.
    pub level: Option<String>,
}

/// A function-calling example (BFCL single-turn categories).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolExample {
    /// Stable id (e.g. `simple_python_0`).
    pub id: String,
    /// The conversation before the call (usually one user message).
    pub messages: Vec<ChatMessage>,
    /// The JSON schemas of the functions the model may call, as given by the source.
    pub functions: Vec<Value>,
    /// What a correct answer does.
    pub expected: ToolExpectation,
}

/// What a correct answer to a [`ToolExample`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToolExpectation {
    /// Exactly these calls, in any order.
    Calls(Vec<ExpectedCall>),
    /// No call at all (BFCL "irrelevance": none of the functions fits).
    NoCall,
    /// At least one call of any function (BFCL "relevance").
    AnyCall,
}

/// One expected call: the function name and, per parameter, the values that are accepted.
///
/// Following BFCL, an empty string among the allowed values means the parameter may be omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectedCall {
    /// Function name.
    pub name: String,
    /// Parameter name → accepted values.
    pub args: BTreeMap<String, Vec<Value>>,
}

/// An instruction-tuning example (user data: instruction / input / output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionExample {
    /// Stable id.
    pub id: String,
    /// The instruction.
    pub instruction: String,
    /// Optional input the instruction applies to.
    pub input: Option<String>,
    /// The reference output.
    pub output: String,
}

/// A chat example (user data): the last message is the assistant's reference reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatExample {
    /// Stable id.
    pub id: String,
    /// The conversation; at least two messages, the last from the assistant.
    pub messages: Vec<ChatMessage>,
}

/// Any example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Example {
    /// Question answering.
    Qa(QaExample),
    /// Maths.
    Math(MathExample),
    /// Function calling.
    Tool(ToolExample),
    /// Instruction / input / output.
    Instruction(InstructionExample),
    /// Chat.
    Chat(ChatExample),
}

impl Example {
    /// The stable id.
    pub fn id(&self) -> &str {
        match self {
            Self::Qa(e) => &e.id,
            Self::Math(e) => &e.id,
            Self::Tool(e) => &e.id,
            Self::Instruction(e) => &e.id,
            Self::Chat(e) => &e.id,
        }
    }

    /// The reference texts that text metrics compare a prediction with.
    ///
    /// QA: all gold answers; maths: the final answer; instruction: the output; chat: the last reply;
    /// tools: the expected function names (the text metrics are not used for tools).
    pub fn references(&self) -> Vec<String> {
        match self {
            Self::Qa(e) => e.answers.clone(),
            Self::Math(e) => vec![e.final_answer.clone()],
            Self::Tool(e) => match &e.expected {
                ToolExpectation::Calls(calls) => calls.iter().map(|c| c.name.clone()).collect(),
                ToolExpectation::NoCall | ToolExpectation::AnyCall => Vec::new(),
            },
            Self::Instruction(e) => vec![e.output.clone()],
            Self::Chat(e) => e.messages.last().map(|m| vec![m.content.clone()]).unwrap_or_default(),
        }
    }
}
