//! The JSON log line, written directly.
//!
//! `tracing_subscriber`'s own JSON format keeps each span's fields as a JSON document and,
//! for every line logged inside the span, parses that document back into a `serde_json` map
//! to print it — twice, for `span` and again for `spans` — and re-parses it for each
//! `span.record`. With one access line per request inside the request span, that was most of
//! the cost of serving a small cached object with `log_format = "json"`. Here a span's fields
//! are kept as a ready-made fragment (`"key":value,...`) that a line copies as it is, and a
//! recorded field is appended to it.
//!
//! The line has the same shape as `tracing_subscriber`'s:
//! `{"timestamp","level","fields":{…},"target","span":{…,"name"},"spans":[{…,"name"},…]}`,
//! with `spans` from the root to the current span. A field recorded twice on a span appears
//! twice; JSON readers take the last value.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats fields as the inside of a JSON object: `"key":value,...`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFields;

/// Formats a whole JSON line (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLine;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut v = Visitor {
            first: current.fields.is_empty(),
            out: &mut current.fields,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(
            w,
            "\",\"level\":\"{}\",\"fields\":{{",
            event.metadata().level()
        )?;
        let mut v = Visitor {
            out: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut v);
        v.result?;
        w.write_str("},\"target\":")?;
        string(&mut w, event.metadata().target())?;
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<_> = scope.from_root().collect();
            let span_object =
                |w: &mut Writer<'_>, s: &tracing_subscriber::registry::SpanRef<'_, S>| {
                    w.write_char('{')?;
                    let ext = s.extensions();
                    let fields = ext
                        .get::<FormattedFields<N>>()
                        .map(|f| f.fields.as_str())
                        .unwrap_or("");
                    if !fields.is_empty() {
                        w.write_str(fields)?;
                        w.write_char(',')?;
                    }
                    w.write_str("\"name\":")?;
                    string(w, s.name())?;
                    w.write_char('}')
                };
            if let Some(current) = spans.last() {
                w.write_str(",\"span\":")?;
                span_object(&mut w, current)?;
            }
            w.write_str(",\"spans\":[")?;
            for (i, s) in spans.iter().enumerate() {
                if i > 0 {
                    w.write_char(',')?;
                }
                span_object(&mut w, s)?;
            }
            w.write_char(']')?;
        }
        w.write_str("}\n")
    }
}

/// Writes fields as `"key":value` pairs, comma-separated.
struct Visitor<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> Visitor<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.out.write_char(',')?;
        }
        string(self.out, field.name())?;
        self.out.write_char(':')
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for Visitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| string(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.put(field, |w| write!(w, "{value}"));
        } else {
            // JSON has no NaN or infinity.
            self.put(field, |w| string(w, &value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A JSON string literal.
fn string<W: fmt::Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaped<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let esc: Option<&str> = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                c if (c as u32) < 0x20 => None,
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            match esc {
                Some(e) => self.0.write_str(e)?,
                None => write!(self.0, "\\u{:04x}", c as u32)?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let b2 = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(JsonLine)
            .fmt_fields(JsonFields)
            .with_writer(move || b2.clone());
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_are_json_with_fields_span_and_spans_root_first() {
        let got = lines(|| {
            let outer =
                tracing::info_span!("request", request_id = "R1", cache = tracing::field::Empty);
            let _o = outer.enter();
            outer.record("cache", "hit");
            let inner = tracing::info_span!("chunk", index = 3u64);
            let _i = inner.enter();
            tracing::info!(
                op = "get",
                status = 200u16,
                delta = -4i64,
                ratio = 0.5f64,
                ok = true,
                odd = "quote \" back\\slash\nnew\u{1}line",
                dbg = ?vec!["a\"b"],
                "access"
            );
        });
        assert_eq!(got.len(), 1);
        let l = &got[0];
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["target"], module_path!());
        let f = &l["fields"];
        assert_eq!(f["message"], "access");
        assert_eq!(f["op"], "get");
        assert_eq!(f["status"], 200);
        assert_eq!(f["delta"], -4);
        assert_eq!(f["ratio"], 0.5);
        assert_eq!(f["ok"], true);
        assert_eq!(f["odd"], "quote \" back\\slash\nnew\u{1}line");
        assert_eq!(f["dbg"], "[\"a\\\"b\"]");
        assert_eq!(l["span"]["name"], "chunk");
        assert_eq!(l["span"]["index"], 3);
        let spans = l["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0]["name"], "request");
        assert_eq!(spans[0]["request_id"], "R1");
        assert_eq!(spans[0]["cache"], "hit", "a recorded field is kept");
        assert_eq!(spans[1]["name"], "chunk");
    }

    #[test]
    fn a_line_outside_any_span_has_no_span() {
        let got = lines(|| tracing::warn!("plain"));
        assert_eq!(got[0]["fields"]["message"], "plain");
        assert!(got[0].get("span").is_none() && got[0].get("spans").is_none());
    }

    #[test]
    fn a_span_without_fields_is_just_its_name() {
        let got = lines(|| {
            let s = tracing::info_span!("bare");
            let _e = s.enter();
            tracing::info!(n = f64::NAN, "x");
        });
        assert_eq!(got[0]["span"], serde_json::json!({"name": "bare"}));
        assert_eq!(got[0]["fields"]["n"], "NaN");
    }
}
