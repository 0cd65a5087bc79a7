//! The messages between a backend and the model service (the extension's background
//! worker that holds each model once per server): one request from the backend, then a
//! stream of replies. Encoded as plain little-endian fields; decoding checks every
//! length against what is left, so a bad message is an error, never a crash or an
//! allocation of its own claimed size.

use crate::error::{Error, ErrorKind};
use crate::models::chat::{Message, Role};
use crate::models::{Finish, SamplingParams};
use crate::rag::prompt::{Grounding, PassageOrder};

/// Which model, as the backend read its catalog row with the caller's rights: the
/// service loads exactly that row's version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub onnx: u32,
    pub version: i64,
}

/// A generation. The prompt comes as text (the messages, and the passages the backend
/// retrieved with the caller's rights): the service tokenizes it, so that a backend never
/// holds the generator's tokenizer (about 45 MB for a 151k-token vocabulary).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub model: ModelRef,
    pub messages: Vec<Message>,
    /// A RAG answer's user message, after `messages`.
    pub grounding: Option<Grounding>,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Whose prefix-cache entries the request may reuse and whose it makes (the caller's
    /// role): timing would tell one role another's prompts.
    pub cache_scope: u32,
    /// A generator adapter's bytes (read by the backend with the caller's rights).
    pub adapter: Option<Vec<u8>>,
    /// Most tokens a step drafts from the prompt (the caller's ragtune.draft_tokens).
    pub draft_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Generate(GenerateRequest),
    Embed { model: ModelRef, texts: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The service took the request out of its queue.
    Admitted,
    /// The prompt it made: its tokens, and how many were dropped to fit the context window.
    Prompt { tokens: u32, dropped: u32 },
    Piece(String),
    Finished { finish: Finish, generated: u32 },
    Embeddings(Vec<Vec<f32>>),
    Failed(Error),
}

fn malformed(what: &str) -> Error {
    Error::new(ErrorKind::DataException, format!("malformed model service message: {what}"))
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).expect("messages are bounded by the caller"));
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.str(v)
            }
            None => self.u8(0),
        }
    }
    fn model(&mut self, m: &ModelRef) {
        self.str(&m.name);
        self.u32(m.onnx);
        self.u64(m.version as u64);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(malformed("it ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, Error> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| malformed("a string is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>, Error> {
        Ok(if self.u8()? == 0 { None } else { Some(self.str()?) })
    }
    /// A count of items of at least `item` bytes each: more than the rest can hold is an error.
    fn count(&mut self, item: usize) -> Result<usize, Error> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item) > self.0.len() {
            return Err(malformed("a count is larger than the message"));
        }
        Ok(n)
    }
    fn model(&mut self) -> Result<ModelRef, Error> {
        Ok(ModelRef { name: self.str()?, onnx: self.u32()?, version: self.u64()? as i64 })
    }
    fn end(&self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(malformed("bytes after its end"))
        }
    }
}

const FINISHES: [Finish; 3] = [Finish::StopToken, Finish::StopString, Finish::Length];
const ROLES: [Role; 3] = [Role::System, Role::User, Role::Assistant];
const ORDERS: [PassageOrder; 2] = [PassageOrder::BestFirst, PassageOrder::BestLast];

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Request::Generate(g) => {
                w.u8(1);
                w.model(&g.model);
                w.u32(g.messages.len() as u32);
                for m in &g.messages {
                    w.u8(ROLES.iter().position(|r| *r == m.role).expect("every role is listed") as u8);
                    w.str(&m.content);
                }
                match &g.grounding {
                    Some(grounding) => {
                        w.u8(1);
                        w.u32(grounding.passages.len() as u32);
                        grounding.passages.iter().for_each(|p| w.str(p));
                        w.str(&grounding.question);
                        w.u32(u32::try_from(grounding.passage_tokens).unwrap_or(u32::MAX));
                        w.u8(ORDERS.iter().position(|o| *o == grounding.order).expect("every order is listed") as u8);
                    }
                    None => w.u8(0),
                }
                w.u32(g.max_tokens);
                w.u64(g.sampling.temperature.to_bits());
                w.u64(g.sampling.top_p.to_bits());
                w.u64(g.sampling.top_k as u64);
                w.u64(g.sampling.seed);
                w.u32(g.stop.len() as u32);
                g.stop.iter().for_each(|s| w.str(s));
                w.u32(g.cache_scope);
                match &g.adapter {
                    Some(bytes) => {
                        w.u8(1);
                        w.bytes(bytes);
                    }
                    None => w.u8(0),
                }
                w.u32(g.draft_tokens);
            }
            Request::Embed { model, texts } => {
                w.u8(2);
                w.model(model);
                w.u32(texts.len() as u32);
                texts.iter().for_each(|t| w.str(t));
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(bytes);
        let request = match r.u8()? {
            1 => {
                let model = r.model()?;
                let n = r.count(5)?;
                let messages = (0..n)
                    .map(|_| {
                        let role = *ROLES.get(r.u8()? as usize).ok_or_else(|| malformed("unknown role"))?;
                        Ok(Message::new(role, r.str()?))
                    })
                    .collect::<Result<_, Error>>()?;
                let grounding = if r.u8()? == 1 {
                    let n = r.count(4)?;
                    let passages = (0..n).map(|_| r.str()).collect::<Result<_, _>>()?;
                    let question = r.str()?;
                    let passage_tokens = r.u32()? as usize;
                    let order = *ORDERS.get(r.u8()? as usize).ok_or_else(|| malformed("unknown passage order"))?;
                    Some(Grounding { passages, question, passage_tokens, order })
                } else {
                    None
                };
                let max_tokens = r.u32()?;
                let sampling = SamplingParams {
                    temperature: r.f64()?,
                    top_p: r.f64()?,
                    top_k: usize::try_from(r.u64()?).map_err(|_| malformed("top_k"))?,
                    seed: r.u64()?,
                };
                let n = r.count(4)?;
                let stop = (0..n).map(|_| r.str()).collect::<Result<_, _>>()?;
                let cache_scope = r.u32()?;
                let adapter = if r.u8()? == 1 { Some(r.bytes()?.to_vec()) } else { None };
                let draft_tokens = r.u32()?;
                Request::Generate(GenerateRequest { model, messages, grounding, max_tokens, sampling, stop, cache_scope, adapter, draft_tokens })
            }
            2 => {
                let model = r.model()?;
                let n = r.count(4)?;
                let texts = (0..n).map(|_| r.str()).collect::<Result<_, _>>()?;
                Request::Embed { model, texts }
            }
            _ => return Err(malformed("unknown request")),
        };
        r.end()?;
        Ok(request)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Reply::Admitted => w.u8(1),
            Reply::Piece(piece) => {
                w.u8(2);
                w.str(piece);
            }
            Reply::Finished { finish, generated } => {
                w.u8(3);
                w.u8(FINISHES.iter().position(|f| f == finish).expect("every finish is listed") as u8);
                w.u32(*generated);
            }
            Reply::Embeddings(vectors) => {
                w.u8(4);
                w.u32(vectors.len() as u32);
                for v in vectors {
                    w.u32(v.len() as u32);
                    v.iter().for_each(|x| w.u32(x.to_bits()));
                }
            }
            Reply::Prompt { tokens, dropped } => {
                w.u8(6);
                w.u32(*tokens);
                w.u32(*dropped);
            }
            Reply::Failed(error) => {
                w.u8(5);
                w.u8(ErrorKind::ALL.iter().position(|k| *k == error.kind).expect("every kind is listed") as u8);
                w.str(&error.message);
                w.opt_str(error.detail.as_deref());
                w.opt_str(error.hint.as_deref());
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(bytes);
        let reply = match r.u8()? {
            1 => Reply::Admitted,
            2 => Reply::Piece(r.str()?),
            3 => {
                let finish = *FINISHES.get(r.u8()? as usize).ok_or_else(|| malformed("unknown finish"))?;
                Reply::Finished { finish, generated: r.u32()? }
            }
            4 => {
                let n = r.count(4)?;
                let mut vectors = Vec::with_capacity(n);
                for _ in 0..n {
                    let width = r.count(4)?;
                    vectors.push((0..width).map(|_| r.u32().map(f32::from_bits)).collect::<Result<_, _>>()?);
                }
                Reply::Embeddings(vectors)
            }
            5 => {
                let kind = *ErrorKind::ALL.get(r.u8()? as usize).ok_or_else(|| malformed("unknown error kind"))?;
                let mut error = Error::new(kind, r.str()?);
                error.detail = r.opt_str()?;
                error.hint = r.opt_str()?;
                Reply::Failed(error)
            }
            6 => Reply::Prompt { tokens: r.u32()?, dropped: r.u32()? },
            _ => return Err(malformed("unknown reply")),
        };
        r.end()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelRef {
        ModelRef { name: "qwen".into(), onnx: 16_401, version: -3 }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let requests = [
            Request::Generate(GenerateRequest {
                model: model(),
                messages: vec![Message::new(Role::System, "Be brief."), Message::new(Role::Assistant, "")],
                grounding: Some(Grounding {
                    passages: vec!["<|im_start|>system".into(), String::new()],
                    question: "Où ?".into(),
                    passage_tokens: 120,
                    order: PassageOrder::BestLast,
                }),
                max_tokens: 32,
                sampling: SamplingParams { temperature: 0.7, top_p: 0.9, top_k: 40, seed: u64::MAX },
                stop: vec!["\n\n".into(), "é".into()],
                cache_scope: 16_384,
                adapter: Some(vec![0, 255, 7]),
                draft_tokens: 6,
            }),
            Request::Generate(GenerateRequest {
                model: model(),
                messages: vec![Message::new(Role::User, "hi")],
                grounding: None,
                max_tokens: 0,
                sampling: SamplingParams::default(),
                stop: Vec::new(),
                cache_scope: 0,
                adapter: None,
                draft_tokens: 0,
            }),
            Request::Embed { model: model(), texts: vec!["a cat".into(), String::new()] },
        ];
        for request in requests {
            assert_eq!(Request::decode(&request.encode()).unwrap(), request);
        }
        let mut error = Error::new(ErrorKind::InsufficientResources, "busy");
        error.hint = Some("wait".into());
        let replies = [
            Reply::Admitted,
            Reply::Piece("Paris".into()),
            Reply::Finished { finish: Finish::StopString, generated: 9 },
            Reply::Embeddings(vec![vec![0.5, -1.0], vec![]]),
            Reply::Prompt { tokens: 260, dropped: 3 },
            Reply::Failed(error),
        ];
        for reply in replies {
            assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        }
    }

    /// Every truncation and every corrupted byte of a message decodes to an error or to
    /// some message, never a panic; claimed counts larger than the message are refused
    /// before anything is allocated for them.
    #[test]
    fn bad_messages_are_errors() {
        let request = Request::Embed { model: model(), texts: vec!["a".into(), "bc".into()] }.encode();
        for end in 0..request.len() {
            assert!(Request::decode(&request[..end]).is_err(), "{end}");
        }
        for at in 0..request.len() {
            for value in [0u8, 1, 2, 0x7f, 0xff] {
                let mut bad = request.clone();
                bad[at] = value;
                let _ = Request::decode(&bad);
            }
        }
        let mut huge = vec![4u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Reply::decode(&huge).err().unwrap().message, "malformed model service message: a count is larger than the message");
        let mut extra = Reply::Admitted.encode();
        extra.push(0);
        assert!(Reply::decode(&extra).is_err());
        assert!(Reply::decode(&[9]).is_err());
    }
}
