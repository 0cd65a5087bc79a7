//! Chat messages rendered into a generator's prompt text with its [`ChatFormat`].

use super::config::ChatFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

impl ChatFormat {
    /// The prompt for `messages`, ending with the opening of the assistant's answer. A
    /// conversation that starts without a system message gets the format's default one,
    /// as the models' own templates do.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut prompt = self.prefix.clone();
        if messages.first().is_none_or(|m| m.role != Role::System) {
            if let Some(system) = &self.default_system {
                prompt.push_str(&self.message(Role::System, system));
            }
        }
        for message in messages {
            prompt.push_str(&self.message(message.role, &message.content));
        }
        prompt.push_str(&self.generation_prompt);
        prompt
    }

    /// What [`ChatFormat::render`] writes before the last user message: the prefix, the
    /// system message and earlier turns. Where the part of a prompt that an answer may
    /// quote begins.
    pub fn before_last_user(&self, messages: &[Message]) -> String {
        let last_user = messages.iter().rposition(|m| m.role == Role::User).unwrap_or(messages.len());
        let mut rendered = self.render(&messages[..last_user]);
        rendered.truncate(rendered.len() - self.generation_prompt.len());
        rendered
    }

    fn message(&self, role: Role, content: &str) -> String {
        // Replace {role} first, so that a "{role}" inside the content stays as written.
        let (before, after) = self.message.split_once("{content}").expect("validated: message contains {content}");
        format!("{}{content}{}", before.replace("{role}", role.name()), after.replace("{role}", role.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml(default_system: Option<&str>) -> ChatFormat {
        ChatFormat {
            prefix: String::new(),
            message: "<|im_start|>{role}\n{content}<|im_end|>\n".into(),
            generation_prompt: "<|im_start|>assistant\n".into(),
            default_system: default_system.map(str::to_string),
        }
    }

    #[test]
    fn chatml_with_default_system() {
        let format = chatml(Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
        // The text the GGUF's own Jinja template renders (tests/fixtures/smollm2_greedy.json).
        assert_eq!(
            format.render(&[Message::new(Role::User, "What is the capital of France?")]),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        // A given system message replaces the default one.
        assert_eq!(
            format.render(&[Message::new(Role::System, "Be brief."), Message::new(Role::User, "Hi")]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn no_default_system_and_a_prefix() {
        let llama3 = ChatFormat {
            prefix: "<|begin_of_text|>".into(),
            message: "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>".into(),
            generation_prompt: "<|start_header_id|>assistant<|end_header_id|>\n\n".into(),
            default_system: None,
        };
        assert_eq!(
            llama3.render(&[Message::new(Role::User, "Hi {role} {content}")]),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi {role} {content}<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(chatml(None).render(&[]), "<|im_start|>assistant\n");
    }

    #[test]
    fn what_comes_before_the_last_user_message() {
        let format = chatml(Some("Default."));
        let messages = [Message::new(Role::System, "Be brief."), Message::new(Role::User, "Hi")];
        let before = format.before_last_user(&messages);
        assert_eq!(before, "<|im_start|>system\nBe brief.<|im_end|>\n");
        assert!(format.render(&messages).starts_with(&before));
        let user_only = [Message::new(Role::User, "Hi")];
        assert_eq!(format.before_last_user(&user_only), "<|im_start|>system\nDefault.<|im_end|>\n");
        assert_eq!(chatml(None).before_last_user(&user_only), "");
    }
}
