//! Golden test on the real model: our forward over the converted Hugging Face directory
//! against an independent, plain f64 forward computed straight from the GGUF weights
//! (llama.cpp's interleaved-pair RoPE on the un-permuted q/k rows), so the conversion
//! (q/k un-permutation, names, shapes) and the fast forward are checked at once.

mod common;

use quantize::eval::perplexity::{window_nll, Protocol};
use quantize::io::gguf::GgufFile;
use quantize::io::tokenizer::Tokenizer;
use quantize::model::LlamaModel;

/// Tokens of the real text run through both forwards (the f64 reference is slow).
const N_TOKENS: usize = 24;
/// f32 products vs f64 loops over 30 blocks: logits agree to this relative tolerance
/// (of the logit range); measured differences are about 1e-4.
const LOGIT_TOL: f64 = 2e-3;

struct Reference {
    g: GgufFile,
}

impl Reference {
    fn t(&self, name: &str) -> Vec<f64> {
        let info = self.g.tensor(name).unwrap_or_else(|| panic!("GGUF has no {name}"));
        self.g.dequantize(info).unwrap().into_iter().map(|x| x as f64).collect()
    }

    /// y[o] = Σ_i W[o][i] x[i], W stored [out, in] (GGUF dims innermost-first = in first).
    fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
        let n = x.len();
        w.chunks(n).map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }

    fn rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        x.iter().zip(w).map(|(a, b)| a * inv * b).collect()
    }

    /// llama.cpp NORM rope: rotate adjacent pairs (x[2i], x[2i+1]) by pos·theta^(-2i/d).
    fn rope(x: &mut [f64], heads: usize, hd: usize, pos: usize, theta: f64) {
        for h in 0..heads {
            for i in 0..hd / 2 {
                let a = pos as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
                let (c, s) = (a.cos(), a.sin());
                let (x0, x1) = (x[h * hd + 2 * i], x[h * hd + 2 * i + 1]);
                x[h * hd + 2 * i] = x0 * c - x1 * s;
                x[h * hd + 2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }

    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let g = &self.g;
        let hidden = g.get_u64("llama.embedding_length").unwrap() as usize;
        let layers = g.get_u64("llama.block_count").unwrap() as usize;
        let heads = g.get_u64("llama.attention.head_count").unwrap() as usize;
        let kv = g.get_u64("llama.attention.head_count_kv").unwrap() as usize;
        let eps = g.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap();
        let theta = g.get_f64("llama.rope.freq_base").unwrap();
        let hd = hidden / heads;
        let emb = self.t("token_embd.weight");
        let mut xs: Vec<Vec<f64>> =
            tokens.iter().map(|&t| emb[t as usize * hidden..(t as usize + 1) * hidden].to_vec()).collect();
        for l in 0..layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let (wq, wk, wv, wo) =
                (self.t(&p("attn_q")), self.t(&p("attn_k")), self.t(&p("attn_v")), self.t(&p("attn_output")));
            let (wg, wu, wd) = (self.t(&p("ffn_gate")), self.t(&p("ffn_up")), self.t(&p("ffn_down")));
            let (n1, n2) = (self.t(&p("attn_norm")), self.t(&p("ffn_norm")));
            let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
            for (pos, x) in xs.iter().enumerate() {
                let h = Self::rms(x, &n1, eps);
                let (mut q, mut k) = (Self::matvec(&wq, &h), Self::matvec(&wk, &h));
                Self::rope(&mut q, heads, hd, pos, theta);
                Self::rope(&mut k, kv, hd, pos, theta);
                qs.push(q);
                ks.push(k);
                vs.push(Self::matvec(&wv, &h));
            }
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut att = vec![0.0; heads * hd];
                for h in 0..heads {
                    let kh = h / (heads / kv);
                    let sc: Vec<f64> = (0..=pos)
                        .map(|j| {
                            (0..hd).map(|d| qs[pos][h * hd + d] * ks[j][kh * hd + d]).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        att[h * hd + d] = (0..=pos).map(|j| e[j] / z * vs[j][kh * hd + d]).sum();
                    }
                }
                let o = Self::matvec(&wo, &att);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let h = Self::rms(x, &n2, eps);
                let (gt, up) = (Self::matvec(&wg, &h), Self::matvec(&wu, &h));
                let act: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let d = Self::matvec(&wd, &act);
                x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            }
        }
        let norm = self.t("output_norm.weight");
        let head = if self.g.tensor("output.weight").is_some() { self.t("output.weight") } else { emb };
        xs.iter().map(|x| Self::matvec(&head, &Self::rms(x, &norm, eps))).collect()
    }
}

fn argmax(r: &[f64]) -> usize {
    (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b })
}

#[test]
fn converted_smollm2_matches_independent_gguf_reference() {
    let dir = common::smollm2_dir();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(common::brown_heldout()).unwrap();
    let tokens: Vec<u32> = tok.encode(&text[..2000]).unwrap()[..N_TOKENS].to_vec();

    let model = LlamaModel::load(&dir).unwrap();
    let vocab = model.config.vocab_size;
    let ours = model.forward(&tokens, 1, N_TOKENS).unwrap();
    let reference = Reference { g: GgufFile::open(common::smollm2_gguf()).unwrap() }.logits(&tokens);

    let mut ref_nll = 0.0;
    for (p, r) in reference.iter().enumerate() {
        let row = &ours[p * vocab..(p + 1) * vocab];
        let range =
            r.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - r.iter().cloned().fold(f64::INFINITY, f64::min);
        let worst = row.iter().zip(r).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst <= LOGIT_TOL * range, "position {p}: logits differ by {worst} (range {range})");
        // Top tokens: the same top-5 set, the same argmax.
        let mut ours_top: Vec<usize> = (0..vocab).collect();
        ours_top.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        assert_eq!(ours_top[0], argmax(r), "position {p}: top-1 token differs");
        let mut ref_top: Vec<usize> = (0..vocab).collect();
        ref_top.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
        let (mut a5, mut b5) = (ours_top[..5].to_vec(), ref_top[..5].to_vec());
        a5.sort();
        b5.sort();
        assert_eq!(a5, b5, "position {p}: top-5 tokens differ");
        if p + 1 < N_TOKENS {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            ref_nll += lse - r[tokens[p + 1] as usize];
        }
    }
    let ref_ppl = (ref_nll / (N_TOKENS - 1) as f64).exp();
    let nll = window_nll(&ours[..(N_TOKENS - 1) * vocab], vocab, &tokens, Protocol::Chunks.first_scored(N_TOKENS));
    let scored = model.forward_scored(&tokens, 1, N_TOKENS, 0).unwrap();
    assert_eq!(scored, ours[..(N_TOKENS - 1) * vocab], "forward_scored must equal the scored rows of forward");
    let ppl = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    assert!(common::close(ppl, ref_ppl, 1e-3, 0.0), "perplexity {ppl} vs reference {ref_ppl}");
    // A real model on real English: far better than uniform over 49152 tokens.
    assert!(ppl < 1000.0, "perplexity {ppl} is implausible for a trained model");
}
