// Dequantizing tiled GEMM over packed integer codes with f16 arithmetic (adapters with
// shader-f16 only). Tiles in workgroup memory are f16 (x and the dequantized weights,
// each rounded once); the products of one K step (≤ 32 terms) are accumulated in f16,
// then added to f32 accumulators, so the sum over the whole input never runs in f16.
// Otherwise identical to gemm_int.wgsl (same bindings, layouts and tiling).
enable f16;

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

var<workgroup> xs: array<f16, 2048>;  // [TK ≤ 32, TM] x tile, k-major
var<workgroup> ws: array<f16, 2048>;  // [TK ≤ 32, TN] dequantized weight tile

fn zero_point(g: u32, o: u32) -> f32 {
    let word = qzeros[g * p.zw + o / PER_WORD];
    return f32((word >> ((o % PER_WORD) * BITS)) & MASK);
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = wid.x * TN;
    let t0 = wid.y * TM;
    let aligned = p.act_order == 0u && p.group_size % PER_WORD == 0u;
    var acc: array<vec4<f32>, 4>;  // [4 tokens] × 4 outputs
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
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
            xs[kk * TM + tt] = f16(v);
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
                        ws[(ww * PER_WORD + j) * TN + nn] = f16(s * (f32((word >> (j * BITS)) & MASK) - z));
                    }
                } else {
                    for (var j = 0u; j < PER_WORD; j++) {
                        let k = kb + j;
                        var g = min(k / p.group_size, p.groups - 1u);
                        if (p.act_order != 0u) {
                            g = g_idx[k];
                        }
                        let v = scales[g * p.ldw + o] * (f32((word >> (j * BITS)) & MASK) - zero_point(g, o));
                        ws[(ww * PER_WORD + j) * TN + nn] = f16(v);
                    }
                }
            } else {
                for (var j = 0u; j < PER_WORD; j++) {
                    ws[(ww * PER_WORD + j) * TN + nn] = f16(0.0);
                }
            }
        }
        workgroupBarrier();
        var part: array<vec4<f16>, 4>;
        for (var i = 0u; i < 4u; i++) {
            part[i] = vec4<f16>(f16(0.0));
        }
        for (var kk = 0u; kk < TK; kk++) {
            let xb = kk * TM + lid.y * 4u;
            let wb = kk * TN + lid.x * 4u;
            let b = vec4<f16>(ws[wb], ws[wb + 1u], ws[wb + 2u], ws[wb + 3u]);
            for (var i = 0u; i < 4u; i++) {
                part[i] = fma(vec4<f16>(xs[xb + i]), b, part[i]);
            }
        }
        for (var i = 0u; i < 4u; i++) {
            acc[i] += vec4<f32>(part[i]);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let o = n0 + lid.x * 4u + j;
            if (t < p.tokens && o < p.n) {
                y[t * p.ldy + p.y0 + o] = acc[i][j];
            }
        }
    }
}
