//! Prompt building and loss masks on known examples, with a ChatML-like test template.

use super::*;
use crate::example::{ChatExample, InstructionExample, MathExample, Passage, QaExample};
use crate::metrics::tool::{calls_match, parse_calls};
use serde_json::json;

fn chatml() -> FnTemplate<impl Fn(&[ChatMessage]) -> String, impl Fn(&str) -> String> {
    FnTemplate {
        prompt: |messages: &[ChatMessage]| {
            let mut out = String::new();
            for m in messages {
                let role = serde_json::to_value(m.role).unwrap();
                out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", role.as_str().unwrap(), m.content));
            }
            out + "<|im_start|>assistant\n"
        },
        completion: |reply: &str| format!("{reply}<|im_end|>\n"),
    }
}

#[test]
fn closed_book_qa_renders_question_and_first_answer() {
    let example = Example::Qa(QaExample {
        id: "q".into(),
        question: "who wrote hamlet".into(),
        answers: vec!["Shakespeare".into(), "William Shakespeare".into()],
        context: None,
    });
    let rendered = render(&example, &chatml());
    assert_eq!(rendered.prompt, "<|im_start|>user\nwho wrote hamlet<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(rendered.completion, "Shakespeare<|im_end|>\n");
}

#[test]
fn reading_comprehension_includes_title_and_context() {
    let example = Example::Qa(QaExample {
        id: "s".into(),
        question: "How many?".into(),
        answers: vec!["23".into()],
        context: Some(Passage { title: Some("Harvard".into()), text: "Older by 23 years.".into() }),
    });
    let prompted = to_prompt(&example);
    assert_eq!(prompted.messages[0].content, "Title: Harvard\nContext: Older by 23 years.\nQuestion: How many?");
}

#[test]
fn instruction_chat_and_math_targets() {
    let inst = Example::Instruction(InstructionExample {
        id: "i".into(),
        instruction: "Translate".into(),
        input: Some("bonjour".into()),
        output: "hello".into(),
    });
    assert_eq!(to_prompt(&inst).messages[0].content, "Translate\n\nbonjour");
    let chat = Example::Chat(ChatExample {
        id: "c".into(),
        messages: vec![ChatMessage::new(Role::System, "be brief"), ChatMessage::new(Role::User, "hi"), ChatMessage::new(Role::Assistant, "hello")],
    });
    let prompted = to_prompt(&chat);
    assert_eq!((prompted.messages.len(), prompted.target.as_str()), (2, "hello"));
    let math = Example::Math(MathExample {
        id: "m".into(),
        question: "1+1?".into(),
        solution: "1+1=2\nThe answer is: 2".into(),
        final_answer: "2".into(),
        subject: None,
        level: None,
    });
    assert_eq!(to_prompt(&math).target, "1+1=2\nThe answer is: 2");
}

#[test]
fn tool_target_is_a_call_that_scores_as_correct() {
    let call =
        ExpectedCall { name: "area".into(), args: [("base".to_owned(), vec![json!(10)]), ("unit".to_owned(), vec![json!(""), json!("m")])].into() };
    let expected = ToolExpectation::Calls(vec![call]);
    let example = ToolExample {
        id: "t".into(),
        messages: vec![ChatMessage::new(Role::User, "area?")],
        functions: vec![json!({"name": "area"})],
        expected: expected.clone(),
    };
    let prompted = to_prompt(&Example::Tool(example));
    assert_eq!(prompted.target, "[area(base=10)]");
    assert!(prompted.messages[0].content.contains("\"name\":\"area\""));
    assert!(calls_match(&parse_calls(&prompted.target), &expected));
}

#[test]
fn loss_masks() {
    assert_eq!(LossMask::WholeSequence.weights(2, 3), vec![1, 1, 1, 1, 1]);
    assert_eq!(LossMask::ResponseOnly.weights(2, 3), vec![0, 0, 1, 1, 1]);
    assert_eq!(LossMask::ResponseOnly.weights(0, 0), Vec::<u8>::new());
    assert_eq!(LossMask::default(), LossMask::WholeSequence);
}
