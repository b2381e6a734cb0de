// FP8 (E4M3 "fn" by default, E5M2 with E5M2 = true) weight-decoding GEMV:
//   y[t, y0 + o] = scale[o] · Σ_k x[t, k] · fp8(q[k, o])
// Codes are the raw FP8 bytes, packed 4 per u32 along the input dim (byte j of word
// (w, o) is input 4w + j), k-major [kw, ldw] like gemv_int.wgsl (ldw = n rounded up to 4),
// read as vec4<u32> = 4 outputs × 4 inputs per thread and step; one f32 scale per output
// (a per-tensor scale is repeated), applied once at the end. Decoding is exact: fp8
// values are small binary fractions, built with ldexp.

override E5M2: bool = false;

const WG_N: u32 = 8u;    // threads along the outputs (4 outputs each)
const WG_K: u32 = 32u;   // input-word slices per workgroup

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
    ldw: u32,        // row stride of qweight and scales = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;             // [tokens, k]
@group(0) @binding(2) var<storage, read> qweight: array<vec4<u32>>; // [kw, ldw / 4], 4 fp8 bytes per u32
@group(0) @binding(3) var<storage, read> scales: array<f32>;        // [ldw]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;       // [tokens, ldy]

var<workgroup> partial: array<vec4<f32>, 256>;  // [WG_K, WG_N]

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

@compute @workgroup_size(8, 32, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = (wid.x * WG_N + lid.x) * 4u;
    let t = wid.y;
    var acc = vec4<f32>(0.0);
    if (o < p.n && t < p.tokens) {
        let xr = t * p.k;
        let row = p.ldw / 4u;
        let c = o / 4u;
        for (var w = lid.y; w < p.kw; w += WG_K) {
            let word = qweight[w * row + c];
            let k0 = w * 4u;
            for (var j = 0u; j < 4u; j++) {
                let b = (word >> vec4<u32>(j * 8u)) & vec4<u32>(0xFFu);
                let v = vec4<f32>(fp8(b.x), fp8(b.y), fp8(b.z), fp8(b.w));
                acc = fma(vec4<f32>(x[xr + k0 + j]), v, acc);
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
                y[t * p.ldy + p.y0 + o + i] = scales[o + i] * sum[i];
            }
        }
    }
}
