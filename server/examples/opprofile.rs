#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;
use burn::tensor::{Device, Distribution, Tensor, Int, TensorData};
use burn::tensor::activation::gelu;
use burn::tensor::module::{attention, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;

fn time<F: FnMut()>(name: &str, flops: f64, reps: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..reps { f(); }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("{name:40} {:8.3} ms  {:7.1} GFLOP/s", s * 1e3, flops / s / 1e9);
}

fn main() {
    let d = Device::flex();
    let t = 803usize;
    let x: Tensor<2> = Tensor::random([t, 384], Distribution::Default, &d);
    let h: Tensor<2> = Tensor::random([t, 1536], Distribution::Default, &d);
    let w1: Tensor<2> = Tensor::random([384, 1152], Distribution::Default, &d);
    let w2: Tensor<2> = Tensor::random([384, 384], Distribution::Default, &d);
    let w3: Tensor<2> = Tensor::random([384, 1536], Distribution::Default, &d);
    let w4: Tensor<2> = Tensor::random([1536, 384], Distribution::Default, &d);
    let b1: Tensor<1> = Tensor::random([1152], Distribution::Default, &d);
    let b3: Tensor<1> = Tensor::random([1536], Distribution::Default, &d);
    let b2: Tensor<1> = Tensor::random([384], Distribution::Default, &d);
    let g: Tensor<1> = Tensor::random([384], Distribution::Default, &d);
    let tf = t as f64;
    time("matmul x@w 384x1152", 2.0*tf*384.0*1152.0, 20, || { let _ = x.clone().matmul(w1.clone()); });
    time("linear 384x1152", 2.0*tf*384.0*1152.0, 20, || { let _ = linear(x.clone(), w1.clone(), Some(b1.clone())); });
    time("linear 384x384", 2.0*tf*384.0*384.0, 20, || { let _ = linear(x.clone(), w2.clone(), Some(b2.clone())); });
    time("linear 384x1536", 2.0*tf*384.0*1536.0, 20, || { let _ = linear(x.clone(), w3.clone(), Some(b3.clone())); });
    time("linear 1536x384", 2.0*tf*384.0*1536.0, 20, || { let _ = linear(h.clone(), w4.clone(), Some(b2.clone())); });
    time("gelu 803x1536", 0.0, 20, || { let _ = gelu(h.clone()); });
    time("layer_norm 803x384", 0.0, 20, || { let _ = layer_norm(x.clone(), g.clone(), Some(b2.clone()), 1e-12); });
    time("add 803x384", 0.0, 20, || { let _ = x.clone() + x.clone(); });
    let ids: Vec<i32> = (0..t as i32).map(|i| i * 7 % 30000).collect();
    let emb: Tensor<2> = Tensor::random([30522, 384], Distribution::Default, &d);
    time("select emb", 0.0, 20, || { let idx: Tensor<1, Int> = Tensor::from_data(TensorData::new(ids.clone(), [t]), &d); let _ = emb.clone().select(0, idx); });
    // attention per sequence of 100 tokens, 8 seqs
    let kv = linear(x.clone(), w1.clone(), Some(b1.clone()));
    let heads = |m: Tensor<2>| { let r = m.dims()[0]; m.reshape([1, r, 12, 32]).swap_dims(1, 2) };
    time("attention 8 seqs x100 (packed)", 8.0*4.0*100.0*100.0*384.0, 20, || {
        let mut v = Vec::new();
        for b in 0..8 { let s = kv.clone().narrow(0, b*100, 100);
          let q = s.clone().narrow(1, 0, 384); let k = s.clone().narrow(1, 384, 384); let vv = s.narrow(1, 768, 384);
          let c = attention(heads(q), heads(k), heads(vv), None, None, AttentionModuleOptions::default());
          v.push(c.swap_dims(1,2).reshape([100, 384])); }
        let _ = Tensor::cat(v, 0);
    });
    time("attention batched [8,12,100,32]", 8.0*4.0*100.0*100.0*384.0, 20, || {
        let s = kv.clone().narrow(0, 0, 800).reshape([8, 100, 1152]);
        let q = s.clone().narrow(2, 0, 384).reshape([8,100,12,32]).swap_dims(1,2);
        let k = s.clone().narrow(2, 384, 384).reshape([8,100,12,32]).swap_dims(1,2);
        let vv = s.narrow(2, 768, 384).reshape([8,100,12,32]).swap_dims(1,2);
        let c = attention(q, k, vv, None, None, AttentionModuleOptions::default());
        let _ = c.swap_dims(1,2).reshape([800, 384]);
    });
    time("exp 803x1536", 0.0, 20, || { let _ = h.clone().exp(); });
    time("recip 803x1536", 0.0, 20, || { let _ = h.clone().recip(); });
    time("mul_scalar 803x1536", 0.0, 20, || { let _ = h.clone().mul_scalar(0.5); });
    time("mul 803x1536", 0.0, 20, || { let _ = h.clone() * h.clone(); });
    time("abs 803x1536", 0.0, 20, || { let _ = h.clone().abs(); });
    time("sign 803x1536", 0.0, 20, || { let _ = h.clone().sign(); });
    time("softmax [8,12,100,100]", 0.0, 20, || { let s: Tensor<4> = Tensor::zeros([8,12,100,100], &d); let _ = burn::tensor::activation::softmax(s, 3); });
    for n in [1024usize, 2048] {
        let a: Tensor<2> = Tensor::random([n, n], Distribution::Default, &d);
        let b: Tensor<2> = Tensor::random([n, n], Distribution::Default, &d);
        time(&format!("matmul {n}^3"), 2.0*(n as f64).powi(3), 5, || { let _ = a.clone().matmul(b.clone()); });
    }
    time("matmul 3520x384x1536", 2.0*3520.0*384.0*1536.0, 10, || { let a: Tensor<2> = Tensor::zeros([3520,384], &d); let _ = a.matmul(w3.clone()); });
}
#[allow(dead_code)]
fn extra() {}
