//! Chunk decompressors that never produce more than the chunk can hold.
//!
//! zarrs' blosc and zstd codecs size their output buffer by what the compressed bytes themselves
//! declare (blosc's header, zstd's frame content size), and its gzip codec reads to the end of the
//! stream. A chunk of a few bytes can thus ask for gigabytes before any check. Every codec in the
//! chain knows the size its decoded bytes must have (`BytesRepresentation`: the chunk's bytes, or
//! a bound on them), so tessera registers, for each of these codecs, a wrapper that holds the
//! decoded size to that bound and otherwise leaves zarrs' codec to do the work. The wrappers take
//! precedence over zarrs' own (runtime plugins are looked up first) for Zarr v2 and v3 alike, and
//! reach inner chunks of shards too, whose codec chains are built from the same registry.
//!
//! The bytes decoded are the same as zarrs' own: blosc is decoded by zarrs after its header has
//! been checked; zstd and gzip are decoded here, into a buffer of at most the bound, with the
//! decoder zarrs uses (`zstd` bulk decompression; `flate2`'s single-member `GzDecoder`).

use std::borrow::Cow;
use std::io::Read;
use std::sync::{Arc, Once};

use zarrs::array::codec::api::{
    ArrayBytesRaw, BytesRepresentation, BytesToBytesCodecTraits, Codec, CodecError, CodecMetadataOptions, CodecOptions,
    CodecRuntimePluginV2, CodecRuntimePluginV3, CodecSpecificOptions, CodecTraits, CodecTraitsV2, CodecTraitsV3, PartialDecoderCapability,
    PartialEncoderCapability, RecommendedConcurrency, register_codec_v2, register_codec_v3,
};
use zarrs::array::codec::{BloscCodec, GzipCodec, ZstdCodec};
use zarrs::metadata::Configuration;
use zarrs::plugin::{ExtensionAliases, ExtensionName, PluginCreateError, ZarrVersion, ZarrVersion2, ZarrVersion3};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Blosc,
    Zstd,
    Gzip,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Blosc => "blosc",
            Kind::Zstd => "zstd",
            Kind::Gzip => "gzip",
        }
    }
}

/// Registers the bounded codecs, once per process, before any array is opened.
pub(super) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register::<BloscCodec>(Kind::Blosc);
        register::<ZstdCodec>(Kind::Zstd);
        register::<GzipCodec>(Kind::Gzip);
    });
}

fn register<C>(kind: Kind)
where
    C: CodecTraitsV3 + CodecTraitsV2 + ExtensionAliases<ZarrVersion3> + ExtensionAliases<ZarrVersion2> + 'static,
{
    register_codec_v3(CodecRuntimePluginV3::new(<C as ExtensionAliases<ZarrVersion3>>::matches_name, move |m| {
        wrap(kind, <C as CodecTraitsV3>::create(m))
    }));
    register_codec_v2(CodecRuntimePluginV2::new(<C as ExtensionAliases<ZarrVersion2>>::matches_name, move |m| {
        wrap(kind, <C as CodecTraitsV2>::create(m))
    }));
}

fn wrap(kind: Kind, codec: Result<Codec, PluginCreateError>) -> Result<Codec, PluginCreateError> {
    Ok(match codec? {
        Codec::BytesToBytes(inner) => Codec::BytesToBytes(Arc::new(Bounded { kind, inner })),
        other => other,
    })
}

#[derive(Debug)]
struct Bounded {
    kind: Kind,
    inner: Arc<dyn BytesToBytesCodecTraits>,
}

impl Bounded {
    /// `declared`: the decoded size the chunk states, where it states one.
    fn too_big(&self, declared: Option<u64>, bound: u64) -> CodecError {
        let size = declared.map(|n| format!("{n} bytes")).unwrap_or_else(|| "more".into());
        CodecError::Other(format!("a {} chunk decodes to {size}, more than the {bound} bytes it can hold", self.kind.name()))
    }

    /// zstd, decoded as zarrs decodes it (bulk) into a buffer of at most `bound` bytes.
    fn zstd(&self, encoded: &[u8], bound: u64) -> Result<Vec<u8>, CodecError> {
        let cap = usize::try_from(bound).map_err(|_| self.too_big(None, bound))?;
        zstd::bulk::decompress(encoded, cap).map_err(|e| {
            // zstd says only that the destination is too small; say what that means here.
            match zstd::zstd_safe::get_frame_content_size(encoded).ok().flatten() {
                Some(n) if n > bound => self.too_big(Some(n), bound),
                _ if e.to_string().contains("too small") => self.too_big(None, bound),
                _ => CodecError::Other(format!("zstd: {e}")),
            }
        })
    }

    /// gzip, inflated as zarrs inflates it (one member), stopping one byte past `bound`.
    fn gzip(&self, encoded: &[u8], bound: u64) -> Result<Vec<u8>, CodecError> {
        let cap = usize::try_from(bound).map_err(|_| self.too_big(None, bound))?;
        let mut out = Vec::with_capacity(cap.min(encoded.len().saturating_mul(4)));
        flate2::read::GzDecoder::new(encoded).take(bound + 1).read_to_end(&mut out).map_err(|e| CodecError::IOError(Arc::new(e)))?;
        if out.len() as u64 > bound {
            return Err(self.too_big(None, bound));
        }
        Ok(out)
    }
}

impl ExtensionName for Bounded {
    fn name(&self, version: ZarrVersion) -> Option<Cow<'static, str>> {
        self.inner.name(version)
    }
}

impl CodecTraits for Bounded {
    fn as_any(&self) -> &dyn std::any::Any {
        self.inner.as_any()
    }

    fn configuration(&self, version: ZarrVersion, options: &CodecMetadataOptions) -> Option<Configuration> {
        self.inner.configuration(version, options)
    }

    fn partial_decoder_capability(&self) -> PartialDecoderCapability {
        // Partial reads go through `decode` (the trait's default partial decoder), so that
        // they are bounded too; tessera reads whole chunks anyway.
        PartialDecoderCapability { partial_read: false, partial_decode: false }
    }

    fn partial_encoder_capability(&self) -> PartialEncoderCapability {
        // The trait's default partial encoder: decode (bounded), change, encode.
        PartialEncoderCapability { partial_encode: false }
    }
}

impl BytesToBytesCodecTraits for Bounded {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn BytesToBytesCodecTraits> {
        self
    }

    fn with_codec_specific_options(self: Arc<Self>, opts: &CodecSpecificOptions) -> Arc<dyn BytesToBytesCodecTraits> {
        Arc::new(Bounded { kind: self.kind, inner: self.inner.clone().with_codec_specific_options(opts) })
    }

    fn recommended_concurrency(&self, decoded: &BytesRepresentation) -> Result<RecommendedConcurrency, CodecError> {
        self.inner.recommended_concurrency(decoded)
    }

    fn encoded_representation(&self, decoded: &BytesRepresentation) -> BytesRepresentation {
        self.inner.encoded_representation(decoded)
    }

    fn encode<'a>(&self, decoded: ArrayBytesRaw<'a>, options: &CodecOptions) -> Result<ArrayBytesRaw<'a>, CodecError> {
        self.inner.encode(decoded, options)
    }

    fn decode<'a>(
        &self,
        encoded: ArrayBytesRaw<'a>,
        decoded: &BytesRepresentation,
        options: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        // An unbounded representation comes only after a codec without a size bound; there is
        // nothing to hold the output to, and zarrs decodes as it would.
        let Some(bound) = decoded.size() else {
            return self.inner.decode(encoded, decoded, options);
        };
        match self.kind {
            Kind::Blosc => {
                // Header: version, versionlz, flags, typesize, then nbytes (u32, little-endian).
                if let Some(h) = encoded.get(4..8) {
                    let nbytes = u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
                    if nbytes > bound {
                        return Err(self.too_big(Some(nbytes), bound));
                    }
                }
                self.inner.decode(encoded, decoded, options)
            }
            Kind::Zstd => self.zstd(&encoded, bound).map(Cow::Owned),
            Kind::Gzip => self.gzip(&encoded, bound).map(Cow::Owned),
        }
    }
}
