//! How a stored model is run: the JSON document kept next to its bytes in the catalog.
//!
//! ```json
//! {"kind": "embedding", "pooling": "mean", "normalize": true, "max_tokens": 256, "dimensions": 384}
//! {"kind": "generator", "chat_format": {"message": "<|im_start|>{role}\n{content}<|im_end|>\n",
//!   "generation_prompt": "<|im_start|>assistant\n", "default_system": "You are ..."},
//!   "stop_token_ids": [2], "context_window": 8192, "vocab_size": 49152}
//! ```
//! Unknown fields are refused, so that a misspelt setting is an error rather than a default.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::types::element::MAX_DIM;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    Embedding(EmbeddingConfig),
    Generator(GeneratorConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Embedding,
    Generator,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// How token states become one vector; mean when left out.
    #[serde(default)]
    pub pooling: Pooling,
    /// Scale embeddings to unit length; true when left out.
    #[serde(default = "normalize_by_default")]
    pub normalize: bool,
    /// Longest input in the model's tokens, special tokens ([CLS], [SEP]) included;
    /// longer texts keep their first tokens.
    pub max_tokens: usize,
    /// Length of the embedding the model produces (checked when it runs).
    pub dimensions: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the token states under the attention mask (sentence-transformers).
    #[default]
    Mean,
    /// The first token's state ([CLS]).
    Cls,
}

/// Settings of a text generator (a decoder-with-past ONNX graph, see `generate.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// How chat messages become the prompt text.
    pub chat_format: ChatFormat,
    /// Token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Most tokens (prompt and generated) the model attends to.
    pub context_window: usize,
    /// Tokens that may be generated: the tokenizer's vocabulary. Output matrices are often
    /// padded past it; those logits are never chosen. The whole logits row when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Where the model came from (file, checksum, license): kept, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

/// A chat template as plain text with `{role}` and `{content}` placeholders, which covers
/// ChatML (Qwen2, SmolLM), Llama 3 and Phi-3 formats without a template engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatFormat {
    /// Text before the first message (a BOS token written out, e.g. `<|begin_of_text|>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// One message; `{role}` is system, user or assistant.
    pub message: String,
    /// Opens the assistant's answer after the last message.
    pub generation_prompt: String,
    /// System message used when the caller gives none; none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_system: Option<String>,
}

fn normalize_by_default() -> bool {
    true
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParameterValue, format!("invalid model config: {}", message.into()))
}

impl ModelConfig {
    /// Parses and validates a config document.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let config: Self = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The canonical document (every field spelled out), for storing in the catalog.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a model config always serializes")
    }

    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Self::Embedding(c) => {
                if c.max_tokens == 0 {
                    return Err(invalid("max_tokens must be at least 1"));
                }
                if !(1..=MAX_DIM).contains(&c.dimensions) {
                    return Err(invalid(format!("dimensions must be between 1 and {MAX_DIM}")));
                }
            }
            Self::Generator(c) => {
                if !c.chat_format.message.contains("{content}") {
                    return Err(invalid("chat_format.message must contain {content}"));
                }
                if c.stop_token_ids.is_empty() {
                    return Err(invalid("stop_token_ids must name at least one token"));
                }
                if c.context_window < 2 {
                    return Err(invalid("context_window must be at least 2"));
                }
                if c.vocab_size == Some(0) {
                    return Err(invalid("vocab_size must be at least 1"));
                }
            }
        }
        Ok(())
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Embedding(_) => ModelKind::Embedding,
            Self::Generator(_) => ModelKind::Generator,
        }
    }

    /// The generator settings, or an error saying what the model is instead.
    pub fn generator(&self) -> Result<&GeneratorConfig, Error> {
        match self {
            Self::Generator(c) => Ok(c),
            Self::Embedding(_) => {
                Err(Error::new(ErrorKind::WrongObjectType, "model is an embedding model, not a generator model"))
            }
        }
    }

    /// The embedding settings, or an error saying what the model is instead.
    pub fn embedding(&self) -> Result<&EmbeddingConfig, Error> {
        match self {
            Self::Embedding(c) => Ok(c),
            other => Err(Error::new(
                ErrorKind::WrongObjectType,
                format!("model is a {} model, not an embedding model", other.kind()),
            )),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Embedding => "embedding",
            Self::Generator => "generator",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(json: &str) -> String {
        ModelConfig::from_json(json).unwrap_err().message
    }

    #[test]
    fn embedding_defaults_and_round_trip() {
        let config = ModelConfig::from_json(r#"{"kind": "embedding", "max_tokens": 256, "dimensions": 384}"#).unwrap();
        let expected = EmbeddingConfig { pooling: Pooling::Mean, normalize: true, max_tokens: 256, dimensions: 384 };
        assert_eq!(config, ModelConfig::Embedding(expected.clone()));
        assert_eq!(config.kind(), ModelKind::Embedding);
        assert_eq!(config.embedding().unwrap(), &expected);
        assert_eq!(
            config.to_json(),
            r#"{"kind":"embedding","pooling":"mean","normalize":true,"max_tokens":256,"dimensions":384}"#
        );
        assert_eq!(ModelConfig::from_json(&config.to_json()).unwrap(), config);

        let cls = ModelConfig::from_json(
            r#"{"kind": "embedding", "pooling": "cls", "normalize": false, "max_tokens": 512, "dimensions": 768}"#,
        )
        .unwrap();
        assert_eq!(cls.embedding().unwrap().pooling, Pooling::Cls);
        assert!(!cls.embedding().unwrap().normalize);
    }

    const CHATML: &str = r#""chat_format": {"message": "<|im_start|>{role}\n{content}<|im_end|>\n", "generation_prompt": "<|im_start|>assistant\n"}"#;

    fn generator(rest: &str) -> String {
        format!(r#"{{"kind": "generator", {CHATML}, {rest}}}"#)
    }

    #[test]
    fn generator_config() {
        let config = ModelConfig::from_json(&generator(r#""stop_token_ids": [2], "context_window": 8192"#)).unwrap();
        assert_eq!(config.kind(), ModelKind::Generator);
        assert_eq!(config.embedding().unwrap_err().message, "model is a generator model, not an embedding model");
        let generator_config = config.generator().unwrap();
        assert_eq!(generator_config.vocab_size, None);
        assert_eq!(generator_config.chat_format.default_system, None);
        assert_eq!(generator_config.chat_format.prefix, "");
        assert_eq!(ModelConfig::from_json(&config.to_json()).unwrap(), config);

        let full = ModelConfig::from_json(&generator(
            r#""stop_token_ids": [2, 0], "context_window": 8192, "vocab_size": 49152, "source": {"license": "apache-2.0"}"#,
        ))
        .unwrap();
        assert_eq!(full.generator().unwrap().vocab_size, Some(49152));
        assert_eq!(ModelConfig::from_json(&full.to_json()).unwrap(), full);
        let embedding = ModelConfig::from_json(r#"{"kind": "embedding", "max_tokens": 8, "dimensions": 4}"#).unwrap();
        assert_eq!(embedding.generator().unwrap_err().kind, ErrorKind::WrongObjectType);
    }

    #[test]
    fn refuses_bad_documents() {
        assert!(message("not json").starts_with("invalid model config: expected ident"));
        assert!(message(r#"{"max_tokens": 256, "dimensions": 384}"#).contains("missing field `kind`"));
        assert!(message(r#"{"kind": "reranker"}"#).contains("unknown variant `reranker`"));
        assert!(message(r#"{"kind": "embedding", "dimensions": 384}"#).contains("missing field `max_tokens`"));
        assert!(message(r#"{"kind": "embedding", "max_token": 256, "dimensions": 384}"#)
            .contains("unknown field `max_token`"));
        assert!(message(r#"{"kind": "embedding", "pooling": "max", "max_tokens": 256, "dimensions": 384}"#)
            .contains("unknown variant `max`"));
        assert!(message(r#"{"kind": "embedding", "max_tokens": -1, "dimensions": 384}"#).contains("invalid value"));
    }

    #[test]
    fn validates_values() {
        assert_eq!(
            message(r#"{"kind": "embedding", "max_tokens": 0, "dimensions": 384}"#),
            "invalid model config: max_tokens must be at least 1"
        );
        for dimensions in [0, MAX_DIM + 1] {
            assert_eq!(
                message(&format!(r#"{{"kind": "embedding", "max_tokens": 8, "dimensions": {dimensions}}}"#)),
                "invalid model config: dimensions must be between 1 and 16000"
            );
        }
        assert_eq!(
            message(r#"{"kind": "generator", "chat_format": {"message": "{role}", "generation_prompt": ""}, "stop_token_ids": [2], "context_window": 8}"#),
            "invalid model config: chat_format.message must contain {content}"
        );
        assert_eq!(
            message(&generator(r#""stop_token_ids": [], "context_window": 8"#)),
            "invalid model config: stop_token_ids must name at least one token"
        );
        assert_eq!(
            message(&generator(r#""stop_token_ids": [2], "context_window": 1"#)),
            "invalid model config: context_window must be at least 2"
        );
        assert_eq!(
            message(&generator(r#""stop_token_ids": [2], "context_window": 8, "vocab_size": 0"#)),
            "invalid model config: vocab_size must be at least 1"
        );
        assert!(message(&generator(r#""stop_token_ids": [2], "context_window": 8, "chat_template": "x""#))
            .contains("unknown field `chat_template`"));
        assert_eq!(ModelConfig::from_json("{}").unwrap_err().kind, ErrorKind::InvalidParameterValue);
    }
}
