//! Deterministic embeddings: one pseudo-random vector per input, derived from
//! its text, as floats or base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::completions::count_words;

/// Largest `dimensions` accepted for embeddings.
const MAX_DIMENSIONS: u64 = 4096;
/// Dimensions of an embedding when the request does not ask for a number.
const DEFAULT_DIMENSIONS: usize = 8;

/// One embedding input: the bytes its vector derives from and its token count.
#[derive(Debug, Clone, PartialEq)]
struct EmbeddingInput {
    seed: Vec<u8>,
    tokens: u64,
}

/// Split `input` (string, array of strings, token array or array of token
/// arrays) into the items that each get an embedding.
fn embedding_inputs(input: &Value) -> Result<Vec<EmbeddingInput>, String> {
    let shape_error = || "'input' must be a string, an array of strings or an array of token arrays".to_string();
    let item = |v: &Value| -> Result<EmbeddingInput, String> {
        match v {
            Value::String(s) => Ok(EmbeddingInput {
                seed: s.as_bytes().to_vec(),
                tokens: count_words(s),
            }),
            Value::Array(ids) if ids.iter().all(Value::is_number) => Ok(EmbeddingInput {
                seed: v.to_string().into_bytes(),
                tokens: ids.len() as u64,
            }),
            _ => Err(shape_error()),
        }
    };
    match input {
        Value::String(_) => Ok(vec![item(input)?]),
        Value::Array(items) if items.is_empty() => Err("'input' must not be empty".to_string()),
        // A flat array of numbers is a single tokenised input.
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![item(input)?]),
        Value::Array(items) => items.iter().map(item).collect(),
        _ => Err(shape_error()),
    }
}

/// A deterministic pseudo-embedding in `[-1, 1)`, derived from SHA-256 so the
/// same input always gets the same vector.
fn embedding_vector(seed: &[u8], dimensions: usize) -> Vec<f32> {
    let mut vector = Vec::with_capacity(dimensions);
    let mut block: u32 = 0;
    while vector.len() < dimensions {
        let digest = Sha256::new()
            .chain_update(seed)
            .chain_update(block.to_le_bytes())
            .finalize();
        for word in digest.chunks_exact(4) {
            if vector.len() == dimensions {
                break;
            }
            let raw = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            // 24 bits are exactly representable in an f32.
            vector.push((raw >> 8) as f32 / (1u32 << 23) as f32 - 1.0);
        }
        block = block.wrapping_add(1);
    }
    vector
}

/// Standard base64 of the little-endian f32s, as OpenAI returns for
/// `"encoding_format": "base64"` (the default of the official Python SDK).
fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}

/// The embeddings answer, or the message of a 400.
pub(super) fn embeddings_answer(request: &Value, model: &str) -> Result<Value, String> {
    let input = request
        .get("input")
        .ok_or_else(|| "'input' is a required property".to_string())?;
    let inputs = embedding_inputs(input)?;
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS).contains(d))
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| format!("'dimensions' must be an integer in 1..={MAX_DIMENSIONS}"))?,
    };
    let as_base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(&input.seed, dimensions);
            let embedding = if as_base64 {
                Value::String(base64_f32(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|i| i.tokens).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_one_per_input() {
        let request = json!({"model": "emb", "input": ["a b", "c"]});
        let answer = embeddings_answer(&request, "emb").expect("valid");
        assert_eq!(answer["object"], "list");
        assert_eq!(answer["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(answer["data"][1]["index"], 1);
        assert_eq!(answer["data"][0]["object"], "embedding");
        assert_eq!(answer["data"][0]["embedding"].as_array().map(Vec::len), Some(8));
        assert_eq!(answer["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

        let single = embeddings_answer(&json!({"input": "a b"}), "emb").expect("valid");
        assert_eq!(single["data"][0]["embedding"], answer["data"][0]["embedding"]);
        let tokens = embeddings_answer(&json!({"input": [1, 2, 3]}), "emb").expect("valid");
        assert_eq!(tokens["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(tokens["usage"]["prompt_tokens"], 3);

        assert!(embeddings_answer(&json!({}), "emb").is_err());
        assert!(embeddings_answer(&json!({"input": []}), "emb").is_err());
        assert!(embeddings_answer(&json!({"input": [{}]}), "emb").is_err());
        assert!(embeddings_answer(&json!({"input": "x", "dimensions": 0}), "emb").is_err());
    }

    #[test]
    fn embedding_vectors_are_deterministic_and_bounded() {
        let a = embedding_vector(b"hello", 20);
        assert_eq!(a.len(), 20);
        assert_eq!(a, embedding_vector(b"hello", 20));
        assert_ne!(a, embedding_vector(b"hellp", 20));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[test]
    fn base64_matches_reference() {
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[0.0, 0.0, 0.0]), "AAAAAAAAAAAAAAAA");
    }
}
