//! A Hugging Face tokenizer (tokenizer.json) as the models use it.
//!
//! Whatever padding and truncation the file carries are replaced (files exported for a
//! fixed shape pad everything to e.g. 128 tokens): a batch is padded to its longest text,
//! and each text keeps its first `max_tokens` tokens, special tokens included. Chunking
//! and embedding see the same tokens, because both start from one plain encoding.
//!
//! tokenizers would encode batches on a rayon pool; its parallelism is switched off for
//! the process, so no thread is ever started (threads would receive Postgres's signals).

use std::ops::Range;

use ndarray::Array2;
use tokenizers::{
    pad_encodings, Encoding, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, TruncationDirection,
};

use crate::error::{Error, ErrorKind};

pub struct Tokenizer {
    /// The file's tokenizer with its padding and truncation removed.
    inner: tokenizers::Tokenizer,
    /// Pad on the right to the longest text of a batch, with the file's pad token.
    padding: PaddingParams,
    max_tokens: usize,
    /// Tokens the post-processor adds to one text ([CLS] and [SEP] for BERT).
    special_tokens: usize,
}

/// Model inputs for a batch of texts, `[texts, longest text in tokens]` each.
pub struct Batch {
    pub input_ids: Array2<i64>,
    pub attention_mask: Array2<i64>,
    pub token_type_ids: Array2<i64>,
}

impl Tokenizer {
    /// Reads a tokenizer.json; `max_tokens` is the model's input limit, special tokens
    /// included, and must leave room for at least one token of text.
    pub fn from_bytes(json: &[u8], max_tokens: usize) -> Result<Self, Error> {
        tokenizers::parallelism::set_parallelism(false);
        let mut inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| {
            Error::new(ErrorKind::DataException, "could not load the tokenizer").with_detail(e.to_string())
        })?;
        // Padding goes on the right so that the first position is always a real token.
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            ..inner.get_padding().cloned().unwrap_or_default()
        };
        inner.with_padding(None);
        inner.with_truncation(None).expect("removing truncation cannot fail");
        let special_tokens = inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_tokens <= special_tokens {
            return Err(Error::new(
                ErrorKind::InvalidParameterValue,
                format!("max_tokens {max_tokens} leaves no room for text: the tokenizer adds {special_tokens} special tokens"),
            ));
        }
        Ok(Self { inner, padding, max_tokens, special_tokens })
    }

    /// The model's input limit, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens of text that fit in one model input once the special tokens are added:
    /// the largest useful chunk.
    pub fn text_tokens(&self) -> usize {
        self.max_tokens - self.special_tokens
    }

    /// Byte ranges in `text` of its tokens, in order, without special tokens and without
    /// truncation. Ranges never decrease; consecutive ranges may leave gaps (whitespace).
    pub fn token_spans(&self, text: &str) -> Result<Vec<Range<usize>>, Error> {
        let encoding = self.plain(text)?;
        Ok(encoding.get_offsets().iter().map(|&(start, end)| start..end).collect())
    }

    /// Encodes texts for one model call: truncated to `max_tokens`, special tokens
    /// added, padded to the longest.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Batch, Error> {
        let mut encodings = texts
            .iter()
            .map(|text| {
                let mut encoding = self.plain(text)?;
                encoding.truncate(self.text_tokens(), 0, TruncationDirection::Right);
                self.inner.post_process(encoding, None, true).map_err(tokenize_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        pad_encodings(&mut encodings, &self.padding).map_err(tokenize_error)?;
        let columns = encodings.first().map_or(0, Encoding::len);
        let matrix = |column: fn(&Encoding) -> &[u32]| {
            Array2::from_shape_fn((encodings.len(), columns), |(row, i)| i64::from(column(&encodings[row])[i]))
        };
        Ok(Batch {
            input_ids: matrix(Encoding::get_ids),
            attention_mask: matrix(Encoding::get_attention_mask),
            token_type_ids: matrix(Encoding::get_type_ids),
        })
    }

    /// Token ids of `text` as written: no special tokens added (special tokens spelled out
    /// in the text, like a chat template's `<|im_start|>`, are recognised), no truncation.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, Error> {
        Ok(self.plain(text)?.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.inner.decode(ids, true).map_err(|e| {
            Error::new(ErrorKind::DataException, "could not decode the generated tokens").with_detail(e.to_string())
        })
    }

    /// Tokens of `text` alone: no special tokens, padding or truncation.
    fn plain(&self, text: &str) -> Result<Encoding, Error> {
        self.inner.encode(text, false).map_err(tokenize_error)
    }
}

fn tokenize_error(e: tokenizers::Error) -> Error {
    Error::new(ErrorKind::DataException, "could not tokenize the text").with_detail(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_files;

    fn minilm() -> Tokenizer {
        Tokenizer::from_bytes(&test_files::minilm("tokenizer.json"), 256).unwrap()
    }

    #[test]
    fn matches_python_tokenizers_on_the_fixtures() {
        let tokenizer = minilm();
        let fixture = test_files::fixture();
        for sentence in &fixture.sentences {
            let batch = tokenizer.encode_batch(&[&sentence.text]).unwrap();
            let ids: Vec<i64> = batch.input_ids.iter().copied().collect();
            assert_eq!(ids, sentence.input_ids, "{:?}", sentence.text);
        }
    }

    #[test]
    fn overrides_the_files_padding_and_truncation() {
        // The file pads to and truncates at 128.
        let tokenizer = minilm();
        assert_eq!((tokenizer.max_tokens(), tokenizer.text_tokens()), (256, 254));
        let long = "word ".repeat(1000);
        let batch = tokenizer.encode_batch(&["A cat sits on the mat.", &long, ""]).unwrap();
        assert_eq!(batch.input_ids.dim(), (3, 256));
        assert_eq!(batch.attention_mask.row(0).sum(), 9);
        assert_eq!(batch.attention_mask.row(1).sum(), 256);
        assert_eq!(batch.attention_mask.row(2).sum(), 2);
        // Truncation keeps the first tokens and still ends with [SEP]; padding is [PAD] = 0.
        assert_eq!(batch.input_ids[(1, 0)], 101);
        assert_eq!(batch.input_ids[(1, 1)], batch.input_ids[(1, 2)]);
        assert_eq!(batch.input_ids[(1, 255)], 102);
        assert_eq!(batch.input_ids.row(2).to_vec()[..3], [101, 102, 0]);
        assert!(batch.token_type_ids.iter().all(|&t| t == 0));

        // A file that pads on the left is padded on the right all the same.
        let left = String::from_utf8(test_files::minilm("tokenizer.json")).unwrap().replacen(
            r#""direction":"Right","pad_to_multiple_of""#,
            r#""direction":"Left","pad_to_multiple_of""#,
            1,
        );
        assert!(left.contains(r#""direction":"Left""#));
        let left = Tokenizer::from_bytes(left.as_bytes(), 256).unwrap();
        assert_eq!(left.encode_batch(&["a b c", ""]).unwrap().input_ids.row(1).to_vec(), [101, 102, 0, 0, 0]);

        let single = tokenizer.encode_batch(&["A cat sits on the mat."]).unwrap();
        assert_eq!(single.input_ids.dim(), (1, 9));
        assert_eq!(tokenizer.encode_batch(&[]).unwrap().input_ids.dim(), (0, 0));
    }

    #[test]
    fn token_spans_are_byte_ranges_of_the_text() {
        let tokenizer = minilm();
        let text = "Café naïve: 東京!";
        let spans = tokenizer.token_spans(text).unwrap();
        let pieces: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(pieces, ["Café", "naïve", ":", "東", "京", "!"]);
        assert!(tokenizer.token_spans("").unwrap().is_empty());
        assert!(tokenizer.token_spans(" \n\t ").unwrap().is_empty());
        // Spans are not truncated.
        assert_eq!(tokenizer.token_spans(&"word ".repeat(1000)).unwrap().len(), 1000);
    }

    #[test]
    fn broken_tokenizers_are_errors() {
        for json in [&b""[..], b"{}", b"not json", b"{\"model\": {\"type\": \"WordPiece\"}}"] {
            let error = Tokenizer::from_bytes(json, 256).err().unwrap();
            assert_eq!(error.kind, ErrorKind::DataException);
            assert_eq!(error.message, "could not load the tokenizer");
            assert!(error.detail.is_some());
        }
        let bytes = test_files::minilm("tokenizer.json");
        assert!(Tokenizer::from_bytes(&bytes[..bytes.len() / 2], 256).is_err());
        let error = Tokenizer::from_bytes(&bytes, 2).err().unwrap();
        assert_eq!(error.message, "max_tokens 2 leaves no room for text: the tokenizer adds 2 special tokens");
    }
}
