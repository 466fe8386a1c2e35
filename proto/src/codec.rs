//! The Keel service's codec: prost's, except that a *request* body that
//! does not decode is the caller's error.
//!
//! tonic-prost's codec answers any body that does not decode with INTERNAL
//! and no metadata, while keel.proto promises `keel-error` on every error
//! status. A request body that is no protobuf of its type is a client's
//! fault, so the server answers INVALID_ARGUMENT with `keel-error:
//! INVALID_ARGUMENT` and a message naming the type and what did not decode.
//! tonic passes a decoder's `Status` out unchanged, metadata included
//! (`Streaming` yields it, `Grpc::unary` turns it into the response's
//! headers).
//!
//! The generated client uses the same codec (tonic-build names one codec
//! per file), where the decoded messages are *responses*: a response that
//! does not decode stays INTERNAL without `keel-error`, as under prost's
//! codec, so `keel-client` keeps treating it as a transport failure and
//! never as a node's definite refusal. Which side a message is on is
//! [`KeelMessage::REQUEST`], set below for every message a Keel RPC takes
//! or returns; one missing fails to compile. The peer service (raft.proto)
//! keeps prost's codec.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::metadata::MetadataValue;
use tonic_prost::ProstEncoder;

use crate::client::ErrorCode;

/// A message a Keel RPC takes or returns.
pub trait KeelMessage: Message + Default {
    /// Its full protobuf name, for error messages.
    const FULL_NAME: &'static str;
    /// Sent by clients (so decoded by the server), rather than answered.
    const REQUEST: bool;
}

/// What a body of type `M` that did not decode is answered with.
pub fn decode_failure<M: KeelMessage>(error: prost::DecodeError) -> Status {
    if !M::REQUEST {
        // prost's codec's answer (gRPC's status-code guide: a parse error
        // of what a server sent is INTERNAL).
        return Status::internal(error.to_string());
    }
    let mut status = Status::invalid_argument(format!(
        "the request body is not a valid {} ({error}); send it encoded as keel.proto defines it",
        M::FULL_NAME
    ));
    let code = MetadataValue::from_static(ErrorCode::InvalidArgument.as_str_name());
    status.metadata_mut().insert("keel-error", code);
    status
}

/// The codec tonic-build puts in the Keel service's client and server.
#[derive(Debug, Clone, Copy)]
pub struct KeelCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KeelCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for KeelCodec<T, U>
where
    T: Message + Send + 'static,
    U: KeelMessage + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KeelDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeelDecoder(PhantomData)
    }
}

/// prost's decoding with [`decode_failure`] for what does not decode.
#[derive(Debug, Clone, Copy)]
pub struct KeelDecoder<U>(PhantomData<U>);

impl<U: KeelMessage> Decoder for KeelDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(decode_failure::<U>)
    }

    fn buffer_settings(&self) -> BufferSettings {
        // What ProstCodec's decoder uses.
        BufferSettings::default()
    }
}

macro_rules! keel_messages {
    ($request:literal: $($name:ident),+ $(,)?) => {
        $(impl KeelMessage for crate::client::$name {
            const FULL_NAME: &'static str = concat!("keel.client.v1.", stringify!($name));
            const REQUEST: bool = $request;
        })+
    };
}

keel_messages!(true:
    ProduceRequest, FetchRequest, LookupByKeyRequest, OffsetForTimestampRequest, CreateTopicRequest,
    DeleteTopicRequest, ListTopicsRequest, DescribeTopicRequest, CommitOffsetRequest, FetchOffsetRequest,
    ClusterInfoRequest, InitClusterRequest, AddNodeRequest, RemoveNodeRequest,
);
keel_messages!(false:
    ProduceResponse, FetchResponse, LookupByKeyResponse, OffsetForTimestampResponse, CreateTopicResponse,
    DeleteTopicResponse, ListTopicsResponse, TopicInfo, CommitOffsetResponse, FetchOffsetResponse,
    ClusterInfoResponse, MembershipResponse,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{FetchResponse, ProduceRequest};

    /// A truncated varint where ProduceRequest.partition (field 2) starts.
    const TRUNCATED: &[u8] = &[0x10, 0xff];

    #[test]
    fn an_undecodable_request_is_invalid_argument_with_keel_error_naming_type_and_problem() {
        let error = ProduceRequest::decode(TRUNCATED).expect_err("a truncated varint decodes");
        let status = decode_failure::<ProduceRequest>(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let named = status.metadata().get("keel-error").and_then(|v| v.to_str().ok());
        assert_eq!(named, Some("INVALID_ARGUMENT"));
        for needle in ["keel.client.v1.ProduceRequest", "partition", "invalid varint"] {
            assert!(status.message().contains(needle), "{:?} does not name {needle:?}", status.message());
        }
    }

    #[test]
    fn an_undecodable_response_stays_internal_without_keel_error() {
        // Why: keel-client reads keel-error as a node's own verdict; a
        // response it cannot parse is no refusal of the request.
        let error = FetchResponse::decode(TRUNCATED).expect_err("a truncated varint decodes");
        let status = decode_failure::<FetchResponse>(error);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.metadata().get("keel-error").is_none(), "{status:?}");
    }

    #[test]
    fn full_names_are_the_proto_names() {
        assert_eq!(<ProduceRequest as KeelMessage>::FULL_NAME, "keel.client.v1.ProduceRequest");
        assert_eq!(<crate::client::TopicInfo as KeelMessage>::FULL_NAME, "keel.client.v1.TopicInfo");
    }
}
