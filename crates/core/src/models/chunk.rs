//! Splitting a text into chunks that fit a model, counted in the model's own tokens.
//!
//! Each chunk holds at most `max_tokens` tokens and ends where the text breaks most
//! naturally inside the window that fits: at a paragraph break (a blank line) if there is
//! one, else at a sentence end or line break, else between words, else between tokens.
//! Among equally strong breaks the latest wins, and breaks in the first half of the
//! window are ignored so that chunks stay at least half full. The next chunk starts
//! `overlap` tokens before the previous one ended (a little later where that would split
//! a character, and never before the previous chunk's second token).

use std::ops::Range;

use super::cancel::{self, CancelCheck};
use super::tokenizer::Tokenizer;
use crate::error::{Error, ErrorKind};

/// How strongly the text breaks between two tokens, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    /// Both tokens come from one character (a Hangul syllable becomes up to three):
    /// a chunk cannot end there, since it ends with a whole character.
    Inside,
    Token,
    Word,
    Sentence,
    Paragraph,
}

/// Closing quotes and brackets that may follow a sentence's final punctuation.
const CLOSERS: &[char] = &['"', '\'', ')', ']', '}', '»', '”', '’', '」', '』', '）'];

/// The break between the token spanning `before` and the next one, spanning `next`.
fn break_between(text: &str, before: &Range<usize>, next: &Range<usize>) -> Break {
    if next.start < before.end {
        return Break::Inside;
    }
    let gap = &text[before.end..next.start];
    match gap.matches('\n').count() {
        0 => {}
        1 => return Break::Sentence,
        _ => return Break::Paragraph,
    }
    match text[..before.end].trim_end_matches(CLOSERS).chars().next_back() {
        // CJK full stops need no space after them.
        Some('。' | '！' | '？') => Break::Sentence,
        Some('.' | '!' | '?') if !gap.is_empty() => Break::Sentence,
        _ if !gap.is_empty() => Break::Word,
        _ => Break::Token,
    }
}

/// Splits `text` into chunks of at most `max_tokens` tokens of `tokenizer`, consecutive
/// chunks sharing `overlap` tokens (see the module documentation for where chunks end).
/// Chunks are slices of `text`, from the start of their first token to the end of their
/// last, so whitespace at either end is left out; a text without tokens has no chunks.
///
/// `max_tokens` counts text tokens only: to embed each chunk whole, pass at most
/// [`Tokenizer::text_tokens`], which leaves room for the model's special tokens.
/// `cancel` is asked while tokenizing and before each chunk.
pub fn chunk<'t>(
    text: &'t str,
    max_tokens: usize,
    overlap: usize,
    tokenizer: &Tokenizer,
    cancel: CancelCheck<'_>,
) -> Result<Vec<&'t str>, Error> {
    if max_tokens == 0 {
        return Err(Error::new(ErrorKind::InvalidParameterValue, "chunks must hold at least 1 token"));
    }
    if overlap >= max_tokens {
        return Err(Error::new(
            ErrorKind::InvalidParameterValue,
            format!("overlap ({overlap} tokens) must be smaller than the chunk size ({max_tokens} tokens)"),
        ));
    }
    let spans = tokenizer.token_spans(text, cancel)?;
    let piece = |from: usize, to: usize| &text[spans[from].start..spans[to - 1].end];
    let inside = |i: usize| break_between(text, &spans[i - 1], &spans[i]) == Break::Inside;

    let mut chunks = Vec::new();
    let mut start = 0;
    while start < spans.len() {
        cancel::check(cancel)?;
        let end = start + max_tokens;
        if end >= spans.len() {
            chunks.push(piece(start, spans.len()));
            break;
        }
        // Candidate cuts: before token `cut`, for cut in the window's second half.
        // max_by_key returns the last of equal maxima: the latest of the strongest breaks.
        let cut = (start + (max_tokens / 2).max(1)..=end)
            .max_by_key(|&cut| break_between(text, &spans[cut - 1], &spans[cut]))
            .expect("the window is never empty");
        chunks.push(piece(start, cut));
        // A chunk starts with a whole character too, so its tokens are the ones counted.
        start = cut.saturating_sub(overlap).max(start + 1);
        while start < cut && inside(start) {
            start += 1;
        }
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_files;

    fn minilm() -> Tokenizer {
        Tokenizer::from_bytes(&test_files::minilm("tokenizer.json"), 256).unwrap()
    }

    fn tokens(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
        tokenizer.token_spans(text, &test_files::never).unwrap().into_iter().map(|r| text[r].to_string()).collect()
    }

    /// Every chunk is a slice of `text` and fits.
    fn check(text: &str, chunks: &[&str], max_tokens: usize, tokenizer: &Tokenizer) {
        let whole = text.as_bytes().as_ptr_range();
        for chunk in chunks {
            let range = chunk.as_bytes().as_ptr_range();
            assert!(whole.start <= range.start && range.end <= whole.end, "{chunk:?}");
            let n = tokenizer.token_spans(chunk, &test_files::never).unwrap().len();
            assert!((1..=max_tokens).contains(&n), "{n} tokens in {chunk:?}");
        }
    }

    #[test]
    fn edge_cases() {
        let tokenizer = minilm();
        assert!(chunk("", 10, 0, &tokenizer, &test_files::never).unwrap().is_empty());
        assert!(chunk(" \n\n\t ", 10, 2, &tokenizer, &test_files::never).unwrap().is_empty());
        assert_eq!(chunk("  A cat sits on the mat.\n", 10, 0, &tokenizer, &test_files::never).unwrap(), ["A cat sits on the mat."]);
        // Exactly max_tokens tokens (7) is one chunk.
        assert_eq!(chunk("A cat sits on the mat.", 7, 3, &tokenizer, &test_files::never).unwrap(), ["A cat sits on the mat."]);
        assert_eq!(chunk("a b c", 1, 0, &tokenizer, &test_files::never).unwrap(), ["a", "b", "c"]);

        let error = chunk("text", 10, 10, &tokenizer, &test_files::never).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidParameterValue);
        assert_eq!(error.message, "overlap (10 tokens) must be smaller than the chunk size (10 tokens)");
        assert!(chunk("text", 10, 11, &tokenizer, &test_files::never).is_err());
        assert_eq!(chunk("text", 0, 0, &tokenizer, &test_files::never).unwrap_err().message, "chunks must hold at least 1 token");
    }

    #[test]
    fn prefers_paragraphs() {
        let tokenizer = minilm();
        let paragraphs = [
            "Postgres stores tables in pages of eight kilobytes. Each page holds a header, item pointers and tuples.",
            "An index is a separate structure. It maps keys to the tuples that hold them, so a lookup reads few pages.",
            "Vacuum reclaims space that deleted rows leave behind, and it keeps the visibility map up to date.",
        ];
        let text = paragraphs.join("\n\n");
        let sizes: Vec<usize> = paragraphs.iter().map(|p| tokens(&tokenizer, p).len()).collect();
        // Room for two paragraphs but not three: the cut falls on the second blank line.
        let max = sizes[0] + sizes[1] + 5;
        assert!(max < sizes.iter().sum::<usize>());
        let chunks = chunk(&text, max, 0, &tokenizer, &test_files::never).unwrap();
        assert_eq!(chunks, [&text[..paragraphs[0].len() + 2 + paragraphs[1].len()], paragraphs[2]]);
        check(&text, &chunks, max, &tokenizer);
    }

    #[test]
    fn then_sentences_then_words_then_tokens() {
        let tokenizer = minilm();
        let text = "The first sentence is here. The second one follows it closely! Does a third exist? Yes.";
        // Sentences of 6, 7, 5 and 2 tokens: the latest sentence end in each window.
        let chunks = chunk(text, 12, 0, &tokenizer, &test_files::never).unwrap();
        assert_eq!(
            chunks,
            ["The first sentence is here.", "The second one follows it closely! Does a third exist?", "Yes."]
        );

        // A line break counts as a sentence end, and closing quotes stay with their sentence.
        let text = "He said \"stop.\" Then nothing happened for a long while\nuntil the bell rang out loud";
        let chunks = chunk(text, 14, 0, &tokenizer, &test_files::never).unwrap();
        assert_eq!(
            chunks,
            ["He said \"stop.\" Then nothing happened for a long while", "until the bell rang out loud"]
        );

        // No punctuation: cut between words, at the end of the window.
        let text = "one two three four five six seven eight nine ten eleven twelve";
        assert_eq!(
            chunk(text, 5, 0, &tokenizer, &test_files::never).unwrap(),
            ["one two three four five", "six seven eight nine ten", "eleven twelve"]
        );

        // One long word: only token boundaries are left.
        let word = "pneumonoultramicroscopicsilicovolcanoconiosis";
        let pieces = tokens(&tokenizer, word);
        let chunks = chunk(word, 4, 0, &tokenizer, &test_files::never).unwrap();
        assert_eq!(chunks.concat(), word);
        assert_eq!(chunks.len(), pieces.len().div_ceil(4));
    }

    #[test]
    fn overlap_carries_tokens_over() {
        let tokenizer = minilm();
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let chunks = chunk(text, 5, 2, &tokenizer, &test_files::never).unwrap();
        assert_eq!(
            chunks,
            [
                "one two three four five",
                "four five six seven eight",
                "seven eight nine ten eleven",
                "ten eleven twelve"
            ]
        );
        // An overlap larger than the step still moves forward, one token at a time at worst.
        let chunks = chunk(text, 4, 3, &tokenizer, &test_files::never).unwrap();
        assert_eq!(chunks.len(), 9);
        assert_eq!(chunks.last().unwrap(), &"nine ten eleven twelve");
    }

    #[test]
    fn a_long_document_at_the_models_size() {
        let tokenizer = minilm();
        let fixture = test_files::fixture();
        let text: String = fixture.sentences.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n");
        let (max, overlap) = (tokenizer.text_tokens(), 32);
        let chunks = chunk(&text, max, overlap, &tokenizer, &test_files::never).unwrap();
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        check(&text, &chunks, max, &tokenizer);
        for pair in chunks.windows(2) {
            let (first, second) = (tokens(&tokenizer, pair[0]), tokens(&tokenizer, pair[1]));
            assert_eq!(first[first.len() - overlap..], second[..overlap]);
        }
        // Nothing is lost: the chunks start in order and the last reaches the end.
        let offsets: Vec<usize> = chunks.iter().map(|c| c.as_ptr() as usize - text.as_ptr() as usize).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(offsets.last().unwrap() + chunks.last().unwrap().len(), text.trim_end().len());
    }

    #[test]
    fn characters_that_become_several_tokens() {
        let tokenizer = minilm();
        // Each Hangul syllable decomposes into two or three tokens sharing its span.
        let text = "한국어 텍스트 처리는 서울 사람 학교 ".repeat(3);
        let spans = tokenizer.token_spans(&text, &test_files::never).unwrap();
        assert_eq!((spans[0].clone(), spans[1].clone(), spans[2].clone()), (0..3, 0..3, 0..3));
        for (max, overlap) in [(4, 0), (5, 2), (7, 3), (20, 6)] {
            let chunks = chunk(&text, max, overlap, &tokenizer, &test_files::never).unwrap();
            check(&text, &chunks, max, &tokenizer);
            // Every character is in some chunk.
            let covered: usize = chunks.iter().map(|c| c.chars().filter(|c| !c.is_whitespace()).count()).sum();
            assert!(covered >= text.chars().filter(|c| !c.is_whitespace()).count());
        }
    }
}
