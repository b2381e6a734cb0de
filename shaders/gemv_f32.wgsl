// Plain f32 GEMV, the baseline the quantized kernels are compared with:
//   y[t, y0 + o] = Σ_k x[t, k] · w[k, o]
// Same shape of work as gemv_int.wgsl (8 threads × 4 outputs by 32 input slices per
// workgroup, one token per workgroup row), each thread reading one vec4<f32> = 4 outputs
// of one input per step. The weight is uploaded transposed, [k, ldw] (ldw = n rounded up
// to 4), so a row of 8 threads reads 128 contiguous bytes.

const WG_N: u32 = 8u;    // threads along the outputs (4 outputs each)
const WG_K: u32 = 32u;   // input slices per workgroup

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
    ldw: u32,        // row stride of w = n rounded up to 4
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [tokens, k]
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;    // [k, ldw / 4] (weight transposed)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [tokens, ldy]

var<workgroup> partial: array<vec4<f32>, 256>;  // [WG_K, WG_N]

@compute @workgroup_size(8, 32, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = (wid.x * WG_N + lid.x) * 4u;
    let t = wid.y;
    var acc = vec4<f32>(0.0);
    if (o < p.n && t < p.tokens) {
        let xr = t * p.k;
        let row = p.ldw / 4u;
        let c = o / 4u;
        for (var k = lid.y; k < p.k; k += WG_K) {
            acc = fma(vec4<f32>(x[xr + k]), w[k * row + c], acc);
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
