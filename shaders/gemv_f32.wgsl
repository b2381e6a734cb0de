// Plain f32 GEMV, the baseline the quantized kernels are compared with:
//   y[t, y0 + o] = Σ_k x[t, k] · w[k, o]
// Same shape of work as gemv_int.wgsl (32 outputs × 8 input slices per workgroup, one
// token per workgroup row), reading 4 bytes of weight per output per step instead of
// one packed word. The weight is uploaded transposed, [k, n], so reads are coalesced.

const WG_N: u32 = 32u;
const WG_K: u32 = 8u;

struct Params {
    n: u32,          // output columns of this weight chunk
    k: u32,          // input width (row stride of x)
    kw: u32,         // = k (one f32 per "word")
    tokens: u32,     // rows of x and y
    group_size: u32, // unused
    groups: u32,     // unused
    act_order: u32,  // unused
    ldy: u32,        // row stride of y (all outputs of the layer)
    y0: u32,         // first output of this chunk within a row of y
    zw: u32,         // unused
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [k, n] (weight transposed)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> partial: array<f32, 256>;  // [WG_K, WG_N]

@compute @workgroup_size(32, 8, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = wid.x * WG_N + lid.x;
    let t = wid.y;
    var acc = 0.0;
    if (o < p.n && t < p.tokens) {
        let xr = t * p.k;
        for (var k = lid.y; k < p.k; k += WG_K) {
            acc += x[xr + k] * w[k * p.n + o];
        }
    }
    partial[lid.y * WG_N + lid.x] = acc;
    workgroupBarrier();
    if (lid.y == 0u && o < p.n && t < p.tokens) {
        var sum = 0.0;
        for (var s = 0u; s < WG_K; s++) {
            sum += partial[s * WG_N + lid.x];
        }
        y[t * p.ldy + p.y0 + o] = sum;
    }
}
