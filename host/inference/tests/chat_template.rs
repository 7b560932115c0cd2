//! Tools through a chat template that reads them (as Qwen 2.5's and Llama 3.1's do): the tool list in `tools`, past
//! calls' arguments as objects (`| tojson`), tool answers with their call id.

mod common;

use kaito_inference::text::{Message, TextModel};
use serde_json::json;

/// A template in the shape of Hugging Face's tool-aware templates (written for this test).
const TEMPLATE: &str = r#"{%- if tools %}<tools>{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters | tojson }};{% endfor %}</tools>
{% endif %}{%- for m in messages %}<{{ m.role }}>{% if m.tool_calls %}{% for c in m.tool_calls %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}{% elif m.role == 'tool' %}[{{ m.tool_call_id }}] {{ m.content }}{% else %}{{ m.content }}{% endif %}</{{ m.role }}>
{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"#;

#[test]
fn a_tool_aware_template_gets_the_tools_and_the_calls_as_objects() {
    let src = common::model("smollm2-135m-instruct");
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), json!({"chat_template": TEMPLATE}).to_string()).unwrap();
    let text = TextModel::load(dir.path(), &[2]).unwrap();
    assert!(text.template_takes_tools);
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}});
    let messages = vec![
        Message::text("user", "1+?"),
        Message { role: "assistant".into(), tool_calls: Some(vec![call]), ..Default::default() },
        Message { tool_call_id: Some("call_1".into()), ..Message::text("tool", "2") },
    ];
    let tools = [json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}})];
    let prompt = text.render_chat_with(&messages, Some(&tools)).unwrap();
    assert_eq!(
        prompt,
        "<tools>add:{\"type\":\"object\"};</tools>\n<user>1+?</user>\n<assistant>[call add {\"a\":1}]</assistant>\n<tool>[call_1] 2</tool>\n<assistant>"
    );
    assert!(!text.render_chat(&messages).unwrap().contains("<tools>"), "no tools, no tool list");
}
