//! Optional OpenTelemetry span export over OTLP/HTTP (protobuf), shared by
//! the gateway and the producer (docs/operations.md, "Tracing").
//!
//! Off unless `--otlp-endpoint` is set. When on, a batch span processor
//! sends the finished spans to `<endpoint>/v1/traces` from its own thread;
//! the HTTP requests themselves run on the service's Tokio runtime. The
//! sampler is parent-based: a context that arrives sampled (its
//! `traceparent` flag) is exported, one that arrives unsampled is not, and
//! a trace Herald starts itself is sampled with `--otlp-sample-ratio`.
//!
//! With export off nothing here allocates or locks: [`Otlp::start_span`]
//! hands back the context to carry on and an inert [`Span`].

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, Status, TraceContextExt as _, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    },
};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
};

pub use opentelemetry::{Array, StringValue, Value, trace::SpanKind};

use crate::trace::TraceParent;

/// OTLP export settings (the same flags for every Herald service).
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// OTLP/HTTP collector base URL, e.g. `http://otel-collector:4318`:
    /// spans are posted (protobuf) to `<url>/v1/traces`. Empty: no spans
    /// are exported (the default).
    #[arg(
        long = "otlp-endpoint",
        env = "HERALD_OTLP_ENDPOINT",
        value_name = "URL",
        default_value = ""
    )]
    pub endpoint: String,
    /// Share of the traces Herald starts itself (requests without a
    /// `traceparent`, outbox rows) that are exported, 0 to 1. A trace that
    /// arrives with a `traceparent` keeps its sender's sampled flag.
    #[arg(
        long = "otlp-sample-ratio",
        env = "HERALD_OTLP_SAMPLE_RATIO",
        value_name = "RATIO",
        default_value_t = 0.01
    )]
    pub sample_ratio: f64,
    /// `service.name` of the exported spans (default: the program's name,
    /// `herald-gateway` or `herald-producer`).
    #[arg(
        long = "otlp-service-name",
        env = "HERALD_OTLP_SERVICE_NAME",
        value_name = "NAME"
    )]
    pub service_name: Option<String>,
}

impl Default for OtlpArgs {
    fn default() -> Self {
        OtlpArgs {
            endpoint: String::new(),
            sample_ratio: 0.01,
            service_name: None,
        }
    }
}

/// An OTLP setting that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error("--otlp-endpoint `{0}` must be an http:// or https:// URL with a host ({1})")]
    Endpoint(String, String),
    /// The ratio is outside 0..=1.
    #[error("--otlp-sample-ratio must be between 0 and 1, got {0}")]
    Ratio(f64),
    /// The service name is blank.
    #[error("--otlp-service-name must not be blank")]
    ServiceName,
    /// The exporter refused its settings.
    #[error("cannot create the OTLP exporter: {0}")]
    Exporter(String),
}

impl OtlpArgs {
    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        !self.endpoint.trim().is_empty()
    }

    /// The URL spans are posted to (`None`: export off).
    pub fn traces_url(&self) -> Result<Option<String>, OtlpConfigError> {
        let endpoint = self.endpoint.trim();
        if endpoint.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| OtlpConfigError::Endpoint(endpoint.to_owned(), why.to_owned());
        let uri: http::Uri = endpoint.parse().map_err(|e| bad(&format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("the scheme must be http or https"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("no query string allowed"));
        }
        let base = endpoint.trim_end_matches('/');
        Ok(Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }))
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), OtlpConfigError> {
        self.traces_url()?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(OtlpConfigError::Ratio(self.sample_ratio));
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(OtlpConfigError::ServiceName);
        }
        Ok(())
    }
}

/// The span exporter of a service, or nothing when export is off. Cheap to
/// clone; [`Otlp::shutdown`] sends what is still queued.
#[derive(Clone, Default)]
pub struct Otlp {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("enabled", &self.enabled())
            .finish()
    }
}

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often queued spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Most spans waiting to be sent; beyond it new ones are dropped (counted
/// by the SDK's own log), so a collector outage never grows memory.
const MAX_QUEUED: usize = 8192;

impl Otlp {
    /// No export: every span is inert.
    pub fn disabled() -> Self {
        Otlp { inner: None }
    }

    /// Start exporting as configured (or not, without an endpoint). Must be
    /// called inside a Tokio runtime: the export requests run on it.
    /// `default_service` is the `service.name` unless the settings name one.
    pub fn start(args: &OtlpArgs, default_service: &str) -> Result<Self, OtlpConfigError> {
        args.validate()?;
        let Some(url) = args.traces_url()? else {
            return Ok(Otlp::disabled());
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            OtlpConfigError::Exporter(format!("OTLP export needs a Tokio runtime: {e}"))
        })?;
        let client = TokioHttpClient {
            client: reqwest::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| OtlpConfigError::Exporter(e.to_string()))?,
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| OtlpConfigError::Exporter(e.to_string()))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED)
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let service = args
            .service_name
            .as_deref()
            .map(str::trim)
            .unwrap_or(default_service)
            .to_owned();
        let resource = Resource::builder()
            .with_service_name(service.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                args.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("herald");
        tracing::info!(endpoint = %url, service, ratio = args.sample_ratio, "exporting spans over OTLP/HTTP");
        Ok(Otlp {
            inner: Some(Arc::new(Inner { provider, tracer })),
        })
    }

    /// Whether spans are exported at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Start a span: a child of `parent` when there is one (its sampled
    /// flag decides), else the root of a new trace (the ratio decides).
    /// Returns the context to hand on, whose span id is the span's own, and
    /// the span (inert when export is off or the trace is not sampled).
    /// `start`: when the work began (now when `None`).
    pub fn start_span(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<&TraceParent>,
        start: Option<SystemTime>,
    ) -> (TraceParent, Span) {
        let Some(inner) = &self.inner else {
            let context = parent.map_or_else(|| TraceParent::root(false), TraceParent::child);
            return (context, Span(None));
        };
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.span_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut builder = inner.tracer.span_builder(name).with_kind(kind);
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        let span = builder.start_with_context(&inner.tracer, &cx);
        let sc = span.span_context();
        let context = TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        };
        let span = span.is_recording().then_some(span);
        (context, Span(span))
    }

    /// Send every queued span and stop exporting (waits for the collector
    /// at most the export timeout).
    pub async fn shutdown(&self) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        // The SDK blocks this thread until its export thread is done, and
        // that one waits for an HTTP request running on this runtime.
        let done = tokio::task::spawn_blocking(move || inner.provider.shutdown()).await;
        match done {
            Ok(Ok(())) => tracing::debug!("OTLP exporter flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "OTLP exporter shutdown"),
            Err(e) => tracing::warn!(error = %e, "OTLP exporter shutdown task failed"),
        }
    }
}

/// A span being recorded, or nothing (export off, trace not sampled):
/// every method is then a no-op.
#[derive(Debug, Default)]
pub struct Span(Option<opentelemetry_sdk::trace::Span>);

impl Span {
    /// Whether this span will be exported.
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Set an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Mark the span failed.
    pub fn fail(&mut self, message: impl Into<String>) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(message.into()));
        }
    }

    /// End the span now.
    pub fn end(self) {
        if let Some(mut span) = self.0 {
            span.end();
        }
    }

    /// End the span at `at`.
    pub fn end_at(self, at: SystemTime) {
        if let Some(mut span) = self.0 {
            span.end_with_timestamp(at);
        }
    }
}

/// The exporter's HTTP client: the SDK's export thread is not a Tokio
/// thread, so each request is spawned onto the service's runtime and
/// awaited from there.
#[derive(Debug)]
struct TokioHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for TokioHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = Response::builder().status(status).body(body)?;
            *answer.headers_mut() = headers;
            Ok::<_, HttpError>(answer)
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: &str, ratio: f64) -> OtlpArgs {
        OtlpArgs {
            endpoint: endpoint.to_owned(),
            sample_ratio: ratio,
            service_name: None,
        }
    }

    #[test]
    fn the_endpoint_is_a_base_url_or_the_traces_url() {
        assert_eq!(args("", 1.0).traces_url().unwrap(), None);
        assert_eq!(
            args("http://collector:4318", 1.0).traces_url().unwrap(),
            Some("http://collector:4318/v1/traces".to_owned())
        );
        assert_eq!(
            args("https://c.example/otlp/", 1.0).traces_url().unwrap(),
            Some("https://c.example/otlp/v1/traces".to_owned())
        );
        assert_eq!(
            args("http://c:4318/v1/traces", 1.0).traces_url().unwrap(),
            Some("http://c:4318/v1/traces".to_owned())
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "collector:4318",
            "ftp://c:21",
            "http://",
            "not a url",
            "http://c?x=1",
        ] {
            assert!(args(bad, 1.0).validate().is_err(), "{bad}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            assert!(args("", ratio).validate().is_err(), "{ratio}");
        }
        let mut blank = args("", 1.0);
        blank.service_name = Some(" ".into());
        assert!(blank.validate().is_err());
        assert!(args("http://127.0.0.1:4318", 0.0).validate().is_ok());
    }

    #[test]
    fn without_export_a_parent_is_continued_and_a_root_is_unsampled() {
        let otlp = Otlp::disabled();
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let (child, span) = otlp.start_span("publish", SpanKind::Producer, Some(&parent), None);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert!(child.sampled());
        assert!(!span.is_recording());
        let (root, _) = otlp.start_span("publish", SpanKind::Producer, None, None);
        assert!(!root.sampled());
    }

    #[tokio::test]
    async fn with_export_the_sampler_decides_and_the_span_id_is_handed_on() {
        // Nothing listens there; spans are only queued in this test.
        let never = Otlp::start(&args("http://127.0.0.1:9", 0.0), "test").unwrap();
        let (root, span) = never.start_span("publish", SpanKind::Producer, None, None);
        assert!(!root.sampled() && !span.is_recording());
        let sampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let (child, span) = never.start_span("publish", SpanKind::Producer, Some(&sampled), None);
        assert!(child.sampled() && span.is_recording());
        assert_eq!(child.trace_id, sampled.trace_id);
        assert_ne!(child.span_id, sampled.span_id);
        drop(span);
        let always = Otlp::start(&args("http://127.0.0.1:9", 1.0), "test").unwrap();
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let (child, span) =
            always.start_span("publish", SpanKind::Producer, Some(&unsampled), None);
        assert!(!child.sampled() && !span.is_recording());
        let (root, span) = always.start_span("publish", SpanKind::Producer, None, None);
        assert!(root.sampled() && span.is_recording());
        drop(span);
        never.shutdown().await;
        always.shutdown().await;
    }
}
