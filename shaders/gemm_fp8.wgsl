// FP8 (E4M3 "fn" by default, E5M2 with E5M2 = true) weight-decoding tiled GEMM:
//   y[t, y0 + o] = Σ_k x[t, k] · scale[o] · fp8(q[k, o])
// Tiling as gemm_int.wgsl (64 tokens × 64 outputs, K steps of 32 = 8 words, 16×16
// threads with 4×4 outputs each); codes decoded once per tile into workgroup memory.
// Layouts as gemv_fp8.wgsl: raw FP8 bytes, 4 per u32 along the input dim, [kw, n];
// one f32 scale per output.

override E5M2: bool = false;

const TM: u32 = 64u;  // tokens per tile
const TN: u32 = 64u;  // outputs per tile
const TKW: u32 = 8u;  // packed words per K step
const TK: u32 = 32u;  // inputs per K step

struct Params {
    n: u32,          // output columns of this weight chunk
    k: u32,          // padded input width = 4 · kw (row stride of x)
    kw: u32,         // packed words per output column
    tokens: u32,     // rows of x and y
    group_size: u32, // unused (per-channel)
    groups: u32,     // = 1
    act_order: u32,  // unused
    ldy: u32,        // row stride of y (all outputs of the layer)
    y0: u32,         // first output of this chunk within a row of y
    zw: u32,         // unused
    ldw: u32,        // row stride of the weight and scales = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> qweight: array<u32>;    // [kw, ldw], 4 fp8 bytes per word
@group(0) @binding(3) var<storage, read> scales: array<f32>;     // [ldw]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> xs: array<f32, 2048>;  // [TK, TM]
var<workgroup> ws: array<f32, 2048>;  // [TK, TN] decoded, scaled weights

// FP8 byte -> f32, exact; NaN codes give NaN, E5M2 infinities give ±inf.
fn fp8(b: u32) -> f32 {
    var v: f32;
    if (E5M2) {
        let e = (b >> 2u) & 31u;
        let m = b & 3u;
        if (e == 31u) {
            v = bitcast<f32>(0x7F800000u | (m << 21u));
        } else if (e == 0u) {
            v = ldexp(f32(m), -16);
        } else {
            v = ldexp(f32(4u + m), i32(e) - 17);
        }
    } else {
        let e = (b >> 3u) & 15u;
        let m = b & 7u;
        if (e == 15u && m == 7u) {
            v = bitcast<f32>(0x7F800000u | (m << 20u));
        } else if (e == 0u) {
            v = ldexp(f32(m), -9);
        } else {
            v = ldexp(f32(8u + m), i32(e) - 10);
        }
    }
    return select(v, -v, (b & 0x80u) != 0u);
}

// y[t, o .. o+3] = v, within bounds.
fn store(t: u32, o: u32, v: vec4<f32>) {
    if (t < p.tokens) {
        for (var j = 0u; j < 4u; j++) {
            if (o + j < p.n) {
                y[t * p.ldy + p.y0 + o + j] = v[j];
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = wid.x * TN;
    let t0 = wid.y * TM;
    // 4 tokens × 4 outputs, one vec4 of outputs per token.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kt = 0u; kt < p.kw; kt += TKW) {
        let k0 = kt * 4u;
        for (var i = li; i < TM * TK; i += 256u) {
            let tt = i / TK;
            let kk = i % TK;
            let t = t0 + tt;
            let k = k0 + kk;
            var v = 0.0;
            if (t < p.tokens && k < p.k) {
                v = x[t * p.k + k];
            }
            xs[kk * TM + tt] = v;
        }
        for (var i = li; i < TKW * TN; i += 256u) {
            let ww = i / TN;
            let nn = i % TN;
            let w = kt + ww;
            let o = n0 + nn;
            if (w < p.kw && o < p.n) {
                let word = qweight[w * p.ldw + o];
                let s = scales[o];
                for (var j = 0u; j < 4u; j++) {
                    ws[(ww * 4u + j) * TN + nn] = s * fp8((word >> (j * 8u)) & 0xFFu);
                }
            } else {
                for (var j = 0u; j < 4u; j++) {
                    ws[(ww * 4u + j) * TN + nn] = 0.0;
                }
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let xb = kk * TM + lid.y * 4u;
            let wb = kk * TN + lid.x * 4u;
            let b = vec4<f32>(ws[wb], ws[wb + 1u], ws[wb + 2u], ws[wb + 3u]);
            acc0 = fma(vec4<f32>(xs[xb]), b, acc0);
            acc1 = fma(vec4<f32>(xs[xb + 1u]), b, acc1);
            acc2 = fma(vec4<f32>(xs[xb + 2u]), b, acc2);
            acc3 = fma(vec4<f32>(xs[xb + 3u]), b, acc3);
        }
        workgroupBarrier();
    }
    let tb = t0 + lid.y * 4u;
    store(tb, n0 + lid.x * 4u, acc0);
    store(tb + 1u, n0 + lid.x * 4u, acc1);
    store(tb + 2u, n0 + lid.x * 4u, acc2);
    store(tb + 3u, n0 + lid.x * 4u, acc3);
}
