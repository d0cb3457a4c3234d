//! The client side of a request as the pipeline needs it. `proxy.rs`
//! implements it for Pingora's `Session`; nothing else of Pingora's server
//! side reaches the pipeline.

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::future::Future;

/// The client connection of one request.
pub trait Downstream: Send {
    fn req_header(&self) -> &RequestHeader;
    fn req_header_mut(&mut self) -> &mut RequestHeader;
    /// The request has no body at all.
    fn body_empty(&mut self) -> bool;
    /// The request body has been read to its end.
    fn body_done(&mut self) -> bool;
    /// The next request body chunk; `Ok(None)` at its end, `Err` if the client failed.
    fn read_body(&mut self) -> impl Future<Output = Result<Option<Bytes>, ()>> + Send;
    /// Resolves when the client goes away. Only meaningful once the body has
    /// been read completely (or there is none).
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
    fn write_header(&mut self, h: ResponseHeader, end: bool) -> impl Future<Output = Result<(), ()>> + Send;
    fn write_body(&mut self, b: Bytes, end: bool) -> impl Future<Output = Result<(), ()>> + Send;
    /// Close the connection after this response instead of keeping it alive.
    fn no_keepalive(&mut self);
    /// A response header has already been sent.
    fn response_started(&self) -> bool;
    /// The answer about to be written is already in the client's wire
    /// format (an Anthropic provider's, to an Anthropic client): it must
    /// pass untranslated. Only a translating connection cares.
    fn native_answer(&mut self, _native: bool) {}
}
