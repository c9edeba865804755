//! Property test of the loaders: a few hundred seeded mutations of the fixture model's safetensors
//! header and config.json. Every one must end in `Ok` or a one-line `Err`, never a panic, and a
//! checkpoint that loads must hand out every tensor (or a clean error).

use bd3_model::checkpoint::{check_file, check_header, expected_tensors};
use bd3_model::init::SplitMix;
use bd3_model::{Checkpoint, ModelConfig};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-a/").to_string() + file,
    )
    .unwrap()
}

/// A value a mutation puts in place of a number: the edges where arithmetic and allocation break.
fn nasty_number(rng: &mut SplitMix, old: &Value) -> Value {
    let old = old.as_u64().unwrap_or(1);
    match rng.next_u64() % 12 {
        0 => Value::from(0u64),
        1 => Value::from(u64::MAX),
        2 => Value::from(1u64 << 32),
        3 => Value::from(1u64 << 40),
        4 => Value::from(old + 1),
        5 => Value::from(old.saturating_sub(1)),
        6 => Value::from(old * 2),
        7 => Value::from(-1i64),
        8 => Value::from(0.5f64),
        9 => Value::from("12"),
        10 => Value::Null,
        _ => Value::from(old.wrapping_mul(1 << (rng.next_u64() % 40))),
    }
}

/// Mutate one number somewhere in `v` (objects and arrays visited at random).
fn mutate_number(v: &mut Value, rng: &mut SplitMix) -> bool {
    match v {
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            if keys.is_empty() {
                return false;
            }
            let start = (rng.next_u64() % keys.len() as u64) as usize;
            (0..keys.len())
                .any(|i| mutate_number(o.get_mut(&keys[(start + i) % keys.len()]).unwrap(), rng))
        }
        Value::Array(a) if !a.is_empty() => {
            let i = (rng.next_u64() % a.len() as u64) as usize;
            mutate_number(&mut a[i], rng)
        }
        Value::Number(_) => {
            *v = nasty_number(rng, v);
            true
        }
        _ => false,
    }
}

fn one_line(e: &bd3_model::Error) {
    let s = e.report();
    assert!(!s.is_empty() && !s.contains('\n'), "not one line: {s:?}");
}

/// Load everything the way `sample` does: config, checkpoint, every tensor.
fn load(config: &[u8], weights: Vec<u8>) -> Result<usize, bd3_model::Error> {
    let cfg = ModelConfig::from_json_bytes(config, "config.json", None)?;
    let _ = cfg.parameter_count();
    let _ = cfg.check_batch(8, cfg.model_length);
    let ckpt = Checkpoint::from_bytes(weights, "model.safetensors", &cfg)?;
    let mut n = 0;
    for (name, shape) in expected_tensors(&cfg) {
        let t = ckpt.tensor_f32(&name)?;
        assert_eq!(t.len(), shape.iter().product::<usize>(), "{name}");
        n += t.len();
    }
    Ok(n)
}

#[test]
fn mutated_headers_and_configs_never_panic() {
    let config = fixture("config.json");
    let weights = fixture("model.safetensors");
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    let data = &weights[8 + n..];
    let cfg_json: Value = serde_json::from_slice(&config).unwrap();
    assert!(
        load(&config, weights.clone()).is_ok(),
        "the unmutated fixture loads"
    );

    let mut rng = SplitMix(0x5eed_f00d);
    let (mut ok, mut err) = (0, 0);
    for case in 0..400 {
        let (cfg_bytes, file) = match case % 4 {
            // A number in the header (shape, offsets) changed.
            0 | 1 => {
                let mut h = header.clone();
                mutate_number(&mut h, &mut rng);
                let json = serde_json::to_vec(&h).unwrap();
                let mut f = (json.len() as u64).to_le_bytes().to_vec();
                f.extend_from_slice(&json);
                f.extend_from_slice(data);
                if rng.next_u64().is_multiple_of(4) {
                    // ... and the file cut short or grown.
                    let cut = (rng.next_u64() % f.len() as u64) as usize;
                    if rng.next_u64().is_multiple_of(2) {
                        f.truncate(cut)
                    } else {
                        f.extend(std::iter::repeat_n(0u8, cut % 64 + 1))
                    }
                }
                (config.clone(), f)
            }
            // A number in config.json changed.
            2 => {
                let mut c = cfg_json.clone();
                mutate_number(&mut c, &mut rng);
                (serde_json::to_vec(&c).unwrap(), weights.clone())
            }
            // Raw bytes of the header flipped (length prefix included).
            _ => {
                let mut f = weights.clone();
                for _ in 0..1 + rng.next_u64() % 3 {
                    let i = (rng.next_u64() % (8 + n as u64)) as usize;
                    f[i] ^= 1 << (rng.next_u64() % 8);
                }
                (config.clone(), f)
            }
        };
        let file_len = file.len() as u64;
        let result = catch_unwind(AssertUnwindSafe(|| {
            // The browser's path: the header alone, checked against the file's length.
            if file.len() >= 8 {
                let hn = u64::from_le_bytes(file[..8].try_into().unwrap());
                if let Some(json) = usize::try_from(hn)
                    .ok()
                    .and_then(|hn| file.get(8..8usize.checked_add(hn)?))
                {
                    if let Err(e) = check_header(json, file_len, "model.safetensors") {
                        one_line(&e);
                    }
                }
            }
            if let Err(e) = check_file(&file, "model.safetensors") {
                one_line(&e);
            }
            load(&cfg_bytes, file)
        }));
        match result {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                one_line(&e);
                err += 1
            }
            Err(_) => panic!("case {case} panicked"),
        }
    }
    // The mutations reach both outcomes (otherwise the test would prove little).
    assert!(ok > 0 && err > 100, "{ok} loaded, {err} refused");
}

#[test]
fn mutated_fixture_case_files_never_panic() {
    use bd3_model::tensor_file::TensorFile;
    let file = fixture("train_case.safetensors");
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    let mut rng = SplitMix(0x0f1c_70e5);
    let (mut ok, mut err) = (0, 0);
    for case in 0..200 {
        let mut h = header.clone();
        // Every tenth case unmutated: the accessors' reading path runs too.
        if case % 10 != 0 {
            mutate_number(&mut h, &mut rng);
        }
        let json = serde_json::to_vec(&h).unwrap();
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(&json);
        f.extend_from_slice(data);
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), bd3_model::Error> {
            let tf = TensorFile::from_bytes(f, "train_case.safetensors")?;
            for name in tf.names() {
                // Each accessor either reads the tensor or says why not; none may panic.
                for r in [
                    tf.f64(&name).map(|_| ()),
                    tf.i64(&name).map(|_| ()),
                    tf.f64_rank(&name, 2).map(|_| ()),
                    tf.i64_scalar(&name).map(|_| ()),
                ] {
                    if let Err(e) = r {
                        one_line(&e);
                    }
                }
            }
            Ok(())
        }));
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                one_line(&e);
                err += 1
            }
            Err(_) => panic!("case {case} panicked"),
        }
    }
    assert!(ok >= 20 && err > 150, "{ok} read, {err} refused");
}
