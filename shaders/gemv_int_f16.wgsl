// Dequantizing GEMV over packed integer codes with f16 arithmetic (adapters with
// shader-f16 only). Same work split, bindings and layouts as gemv_int.wgsl (vec4<u32> =
// 4 outputs × PER_WORD inputs per thread and step). The 4 outputs' weights are dequantized
// in f16 (ŵ = (q - zero) · f16(scale)), so f16 only has to hold x·ŵ, as in any f16
// inference; a word's PER_WORD products are summed in vec4<f16>, then accumulated across
// words in f32, so the sum over the whole input never runs in f16.
// (The usual trick of turning two 16-bit-apart codes into a vec2<f16> with one mask needs
// bitcast<vec2<f16>>(u32), which naga 30 does not translate.)
//   y[t, y0 + o] = Σ_words f32(Σ_j f16(x) · ŵ)
enable f16;

override BITS: u32 = 4u;                  // 2, 3, 4 or 8
override PER_WORD: u32 = 32u / BITS;      // codes per u32 word
override MASK: u32 = (1u << BITS) - 1u;

const WG_N: u32 = 8u;    // threads along the outputs (4 outputs each)
const WG_K: u32 = 32u;   // input-word slices per workgroup

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
    ldw: u32,        // row stride of qweight and scales = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;             // [tokens, k]
@group(0) @binding(2) var<storage, read> qweight: array<vec4<u32>>; // [kw, ldw / 4]
@group(0) @binding(3) var<storage, read> scales: array<vec4<f32>>;  // [groups, ldw / 4]
@group(0) @binding(4) var<storage, read> qzeros: array<u32>;        // [groups, zw]
@group(0) @binding(5) var<storage, read> g_idx: array<u32>;         // [k] (act_order) or [1]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;       // [tokens, ldy]

var<workgroup> partial: array<vec4<f32>, 256>;  // [WG_K, WG_N]

fn zero_point(g: u32, oi: u32) -> u32 {
    return (qzeros[g * p.zw + oi / PER_WORD] >> ((oi % PER_WORD) * BITS)) & MASK;
}

@compute @workgroup_size(8, 32, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = (wid.x * WG_N + lid.x) * 4u;
    let t = wid.y;
    var acc = vec4<f32>(0.0);
    if (o < p.n && t < p.tokens) {
        let xr = t * p.k;
        let row = p.ldw / 4u;
        let c = o / 4u;
        let aligned = p.act_order == 0u && p.group_size % PER_WORD == 0u;
        for (var w = lid.y; w < p.kw; w += WG_K) {
            let word = qweight[w * row + c];
            let k0 = w * PER_WORD;
            if (aligned) {
                let g = k0 / p.group_size;
                let s = vec4<f16>(scales[g * row + c]);
                let z = vec4<f16>(f16(zero_point(g, o)), f16(zero_point(g, o + 1u)), f16(zero_point(g, o + 2u)), f16(zero_point(g, o + 3u)));
                var d = vec4<f16>(f16(0.0));
                for (var j = 0u; j < PER_WORD; j++) {
                    let q = vec4<f16>((word >> vec4<u32>(j * BITS)) & vec4<u32>(MASK));
                    d = fma(vec4<f16>(f16(x[xr + k0 + j])), (q - z) * s, d);
                }
                acc += vec4<f32>(d);
            } else {
                for (var j = 0u; j < PER_WORD; j++) {
                    let k = k0 + j;
                    var g = min(k / p.group_size, p.groups - 1u);
                    if (p.act_order != 0u) {
                        g = g_idx[k];
                    }
                    let xh = f16(x[xr + k]);
                    let s = vec4<f16>(scales[g * row + c]);
                    for (var i = 0u; i < 4u; i++) {
                        let wv = (f16((word[i] >> (j * BITS)) & MASK) - f16(zero_point(g, o + i))) * s[i];
                        acc[i] += f32(xh * wv);
                    }
                }
            }
        }
    }
    partial[lid.y * WG_N + lid.x] = acc;
    workgroupBarrier();
    if (lid.y == 0u && o < p.n && t < p.tokens) {
        var sum = vec4<f32>(0.0);
        for (var s = 0u; s < WG_K; s++) {
            sum += partial[s * WG_N + lid.x];
        }
        for (var i = 0u; i < 4u; i++) {
            if (o + i < p.n) {
                y[t * p.ldy + p.y0 + o + i] = sum[i];
            }
        }
    }
}
