//! How a stored model is run: the JSON document kept next to its bytes in the catalog.
//!
//! ```json
//! {"kind": "embedding", "pooling": "mean", "normalize": true, "max_tokens": 256, "dimensions": 384}
//! {"kind": "generator", "chat_template": "...", "eos_token_ids": [2], "context_window": 8192}
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

/// Settings of a text generator; only validated here, the generation code reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Template that turns chat messages into the prompt text.
    pub chat_template: String,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Most tokens (prompt and generated) the model attends to.
    pub context_window: usize,
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
                if c.chat_template.trim().is_empty() {
                    return Err(invalid("chat_template must not be empty"));
                }
                if c.eos_token_ids.is_empty() {
                    return Err(invalid("eos_token_ids must name at least one token"));
                }
                if c.context_window == 0 {
                    return Err(invalid("context_window must be at least 1"));
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

    #[test]
    fn generator_config() {
        let config = ModelConfig::from_json(
            r#"{"kind": "generator", "chat_template": "<|im_start|>{role}\n{content}<|im_end|>\n", "eos_token_ids": [2], "context_window": 8192}"#,
        )
        .unwrap();
        assert_eq!(config.kind(), ModelKind::Generator);
        assert_eq!(config.embedding().unwrap_err().message, "model is a generator model, not an embedding model");
        assert_eq!(ModelConfig::from_json(&config.to_json()).unwrap(), config);
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
            message(r#"{"kind": "generator", "chat_template": " ", "eos_token_ids": [2], "context_window": 1}"#),
            "invalid model config: chat_template must not be empty"
        );
        assert_eq!(
            message(r#"{"kind": "generator", "chat_template": "t", "eos_token_ids": [], "context_window": 1}"#),
            "invalid model config: eos_token_ids must name at least one token"
        );
        assert_eq!(
            message(r#"{"kind": "generator", "chat_template": "t", "eos_token_ids": [2], "context_window": 0}"#),
            "invalid model config: context_window must be at least 1"
        );
        assert_eq!(ModelConfig::from_json("{}").unwrap_err().kind, ErrorKind::InvalidParameterValue);
    }
}
