// Dequantizing tiled GEMM over packed integer codes (int4 and int8; also 2- and 3-bit).
//   y[t, y0 + o] = Σ_k x[t, k] · scale[g(k), o] · (q[k, o] - zero[g(k), o])
// Tiles of 64 tokens × 64 outputs; each K step stages TK = TKW · PER_WORD inputs of x
// and the TKW packed words of 64 outputs in workgroup memory, dequantizing the codes
// once per tile (not per token). 16×16 threads, 4×4 outputs each.
// Layouts as in gemv_int.wgsl: qweight [kw, ldw] (GPTQ packing along the input dim),
// qzeros [groups, zw] packed along the outputs (real zero points), scales f32 [groups, ldw].

override BITS: u32 = 4u;                  // 2, 3, 4 or 8
override PER_WORD: u32 = 32u / BITS;      // codes per u32 word
override MASK: u32 = (1u << BITS) - 1u;
override TKW: u32 = 32u / PER_WORD;       // packed words per K step (4 for int4)
override TK: u32 = TKW * PER_WORD;        // inputs per K step (32; 30 for 3-bit)

const TM: u32 = 64u;  // tokens per tile
const TN: u32 = 64u;  // outputs per tile

struct Params {
    n: u32,          // output columns of this weight chunk
    k: u32,          // padded input width = kw · PER_WORD (row stride of x)
    kw: u32,         // packed words per output column
    tokens: u32,     // rows of x and y
    group_size: u32, // input columns per group (k for per-channel); ignored with act_order
    groups: u32,     // groups per output column
    act_order: u32,  // 1: the group of column k is g_idx[k]
    ldy: u32,        // row stride of y (all outputs of the layer)
    y0: u32,         // first output of this chunk within a row of y
    zw: u32,         // words per group in qzeros = ceil(ldw / PER_WORD)
    ldw: u32,        // row stride of the weight and scales = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> qweight: array<u32>;    // [kw, ldw]
@group(0) @binding(3) var<storage, read> scales: array<f32>;     // [groups, ldw]
@group(0) @binding(4) var<storage, read> qzeros: array<u32>;     // [groups, zw]
@group(0) @binding(5) var<storage, read> g_idx: array<u32>;      // [k] (act_order) or [1]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> xs: array<f32, 2048>;  // [TK ≤ 32, TM] x tile, k-major
var<workgroup> ws: array<f32, 2048>;  // [TK ≤ 32, TN] dequantized weight tile

fn zero_point(g: u32, o: u32) -> f32 {
    let word = qzeros[g * p.zw + o / PER_WORD];
    return f32((word >> ((o % PER_WORD) * BITS)) & MASK);
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
    let aligned = p.act_order == 0u && p.group_size % PER_WORD == 0u;
    // 4 tokens × 4 outputs, one vec4 of outputs per token.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kt = 0u; kt < p.kw; kt += TKW) {
        let k0 = kt * PER_WORD;
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
                let kb = w * PER_WORD;
                if (aligned) {
                    let g = kb / p.group_size;
                    let s = scales[g * p.ldw + o];
                    let z = zero_point(g, o);
                    for (var j = 0u; j < PER_WORD; j++) {
                        ws[(ww * PER_WORD + j) * TN + nn] = s * (f32((word >> (j * BITS)) & MASK) - z);
                    }
                } else {
                    for (var j = 0u; j < PER_WORD; j++) {
                        let k = kb + j;
                        var g = min(k / p.group_size, p.groups - 1u);
                        if (p.act_order != 0u) {
                            g = g_idx[k];
                        }
                        ws[(ww * PER_WORD + j) * TN + nn] = scales[g * p.ldw + o] * (f32((word >> (j * BITS)) & MASK) - zero_point(g, o));
                    }
                }
            } else {
                for (var j = 0u; j < PER_WORD; j++) {
                    ws[(ww * PER_WORD + j) * TN + nn] = 0.0;
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
