//! `abi010`: a filter written directly against Proxy-Wasm ABI 0.1.0, as
//! older SDK builds export it (`proxy_abi_version_0_1_0`, header callbacks
//! without the end-of-stream flag), without any SDK. On request headers it
//! adds `x-abi: 0.1.0` to the request and, on response headers, the number
//! of request headers it was told of as `x-abi-headers`.

use std::cell::Cell;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_add_header_map_value(t: u32, kp: *const u8, kl: usize, vp: *const u8, vl: usize) -> u32;
    fn proxy_log(level: u32, p: *const u8, l: usize) -> u32;
}

thread_local! {
    static HEADERS: Cell<u32> = const { Cell::new(0) };
}

fn add(map: u32, k: &str, v: &str) {
    // SAFETY: pointers and lengths of live strings.
    unsafe {
        proxy_add_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len());
    }
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_1_0() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size.max(1));
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_id: u32, _parent: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_id: u32, _size: u32) -> u32 {
    let msg = "abi010: started";
    // SAFETY: pointer and length of a live string.
    unsafe { proxy_log(2, msg.as_ptr(), msg.len()) };
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_id: u32, _size: u32) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_id: u32, headers: u32) -> u32 {
    HEADERS.with(|h| h.set(headers));
    add(0, "x-abi", "0.1.0");
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_id: u32, _headers: u32) -> u32 {
    let n = HEADERS.with(|h| h.get()).to_string();
    add(2, "x-abi-headers", &n);
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_done(_id: u32) -> u32 {
    1
}
