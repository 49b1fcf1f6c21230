//! User feedback on requests (`request_feedback`, written by `POST /v1/feedback`) and the export of the
//! request log joined with it (`optiroute router export`), for retraining the router on one's own
//! traffic. Rows are `optiroute_router::traffic::TrafficRow`s, one JSON object per line.

use std::io::Write;

use futures_util::TryStreamExt;
use optiroute_router::traffic::{CASCADE_REASON_PREFIX, Feedback, LoggedFeatures, TrafficRow};
use sqlx::Row;

use super::{Store, on_pool};

/// Longest comment kept with a rating, in bytes.
pub const MAX_COMMENT_BYTES: usize = 1024;

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The keys (request-log `key_id`s) that made requests with id `request_id`: usually one; none if the
/// id is unknown (or its row is not written yet). Client-chosen ids may repeat across keys.
pub async fn owners(store: &Store, request_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT DISTINCT key_id FROM request_log WHERE request_id = $1 LIMIT 100";
    on_pool!(store, p => sqlx::query(sql)
        .bind(request_id)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("key_id"))
        .collect())
}

/// Records (or replaces) the rating of request `request_id` made by key `key_id`.
pub async fn upsert(
    store: &Store,
    key_id: &str,
    request_id: &str,
    score: f64,
    comment: Option<&str>,
) -> Result<(), sqlx::Error> {
    let micros = (score.clamp(0.0, 1.0) * 1e6).round() as i64;
    let now = unix_ms();
    let sql = "INSERT INTO request_feedback (key_id, request_id, score_micros, comment, created_ms, updated_ms) \
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_id, request_id) DO UPDATE SET \
               score_micros = excluded.score_micros, comment = excluded.comment, updated_ms = excluded.updated_ms";
    on_pool!(store, p => {
        sqlx::query(sql)
            .bind(key_id)
            .bind(request_id)
            .bind(micros)
            .bind(comment)
            .bind(now)
            .bind(now)
            .execute(p)
            .await?;
    });
    Ok(())
}

/// The stored rating of a request, if any.
pub async fn get(store: &Store, key_id: &str, request_id: &str) -> Result<Option<Feedback>, sqlx::Error> {
    let sql = "SELECT score_micros, comment, updated_ms FROM request_feedback WHERE key_id = $1 AND request_id = $2";
    on_pool!(store, p => {
        match sqlx::query(sql).bind(key_id).bind(request_id).fetch_optional(p).await? {
            None => Ok(None),
            Some(r) => Ok(Some(Feedback {
                score: r.try_get::<i64, _>("score_micros")? as f64 / 1e6,
                comment: r.try_get("comment")?,
                at_ms: r.try_get("updated_ms")?,
            })),
        }
    })
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Only rows that finished at or after this (Unix ms).
    pub since_ms: i64,
    /// Only rows with feedback or a cascade escalation.
    pub labelled: bool,
    /// The tier that counts as the strong model.
    pub strong_tier: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    pub rows: usize,
    pub with_feedback: usize,
    pub with_features: usize,
    pub escalated: usize,
}

const EXPORT: &str = "SELECT r.at_ms, r.request_id, r.key_id, r.model, r.deployment, r.tier, r.route_reason, \
     r.cache_status, r.status, r.latency_us, r.prompt_tokens, r.completion_tokens, r.cost_nanos, r.features, \
     f.score_micros, f.comment, f.updated_ms \
     FROM request_log r LEFT JOIN request_feedback f ON f.key_id = r.key_id AND f.request_id = r.request_id \
     WHERE r.at_ms >= $1";

fn traffic_row<'r, R>(row: &'r R, strong_tier: Option<&str>) -> Result<TrafficRow, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let tier: Option<String> = row.try_get("tier")?;
    let route_reason: String = row.try_get("route_reason")?;
    let features: Option<String> = row.try_get("features")?;
    let cache: String = row.try_get("cache_status")?;
    let score: Option<i64> = row.try_get("score_micros")?;
    let feedback = match score {
        Some(s) => Some(Feedback {
            score: s as f64 / 1e6,
            comment: row.try_get("comment")?,
            at_ms: row.try_get::<Option<i64>, _>("updated_ms")?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(TrafficRow {
        request_id: row.try_get("request_id")?,
        at_ms: row.try_get("at_ms")?,
        key_id: row.try_get("key_id")?,
        model: row.try_get("model")?,
        deployment: row.try_get("deployment")?,
        strong_tier: tier.is_some() && tier.as_deref() == strong_tier,
        tier,
        // A cache hit replays an escalated answer with its route reason; the check ran once. (The
        // labelled export's SQL filter in `export` states the same rule.)
        cascade_escalated: route_reason.starts_with(CASCADE_REASON_PREFIX) && cache != "hit",
        route_reason,
        cache,
        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
        latency_us: u(row.try_get("latency_us")?),
        prompt_tokens: u(row.try_get("prompt_tokens")?),
        completion_tokens: u(row.try_get("completion_tokens")?),
        cost_usd: u(row.try_get("cost_nanos")?) as f64 / 1e9,
        feedback,
        // A value this build cannot read is exported as absent rather than failing the export.
        features: features.and_then(|f| serde_json::from_str::<LoggedFeatures>(&f).ok()),
    })
}

/// Writes the request log joined with its feedback to `out`, one JSON line per request, oldest
/// first. Streams from the store (the log may be large).
pub async fn export(store: &Store, opts: &ExportOptions, out: &mut impl Write) -> anyhow::Result<ExportCounts> {
    let mut sql = EXPORT.to_owned();
    if opts.labelled {
        // Rated rows, and escalations other than cache replays (as `traffic_row` reads them).
        sql.push_str(&format!(
            " AND (f.score_micros IS NOT NULL OR (r.route_reason LIKE '{CASCADE_REASON_PREFIX}%' AND r.cache_status <> 'hit'))"
        ));
    }
    sql.push_str(" ORDER BY r.at_ms, r.request_id");
    let strong = opts.strong_tier.as_deref();
    let mut counts = ExportCounts::default();
    on_pool!(store, p => {
        let mut rows = sqlx::query(&sql).bind(opts.since_ms).fetch(p);
        while let Some(row) = rows.try_next().await? {
            let t = traffic_row(&row, strong)?;
            counts.rows += 1;
            counts.with_feedback += usize::from(t.feedback.is_some());
            counts.with_features += usize::from(t.features.is_some());
            counts.escalated += usize::from(t.cascade_escalated);
            serde_json::to_writer(&mut *out, &t)?;
            out.write_all(b"\n")?;
        }
    });
    out.flush()?;
    Ok(counts)
}

/// Parses `--since`: an age (`30s`, `15m`, `12h`, `7d`) or a Unix time in seconds; Unix ms out.
pub fn parse_since(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--since `{s}`: expected an age like 7d, 12h, 30m, 45s or Unix seconds"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("--since `{s}`: unknown unit `{unit}` (use s, m, h or d)"),
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)))
}

/// `optiroute router export`.
pub async fn export_cli(args: optiroute_router::cli::ExportArgs) -> anyhow::Result<()> {
    let config = args
        .config
        .clone()
        .or_else(|| std::env::var_os("OPTIROUTE_CONFIG").map(Into::into));
    let mut cfg = match &config {
        Some(p) => crate::config::Config::load(p)?,
        None => crate::config::Config::from_env(),
    };
    let url = args.store.clone().or_else(|| {
        std::env::var("OPTIROUTE_DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
    });
    if let Some(u) = url {
        cfg.store.database_url = Some(u);
    }
    let opts = ExportOptions {
        since_ms: match &args.since {
            Some(s) => parse_since(s, unix_ms())?,
            None => 0,
        },
        labelled: args.labelled,
        strong_tier: args.strong_tier.clone().or_else(|| cfg.routing.tiers.last().cloned()),
    };
    let store = crate::auth::open_store(&cfg).await?;
    let result = match &args.out {
        Some(path) => {
            let f = std::fs::File::create(path).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
            export(&store, &opts, &mut std::io::BufWriter::new(f)).await
        }
        None => export(&store, &opts, &mut std::io::BufWriter::new(std::io::stdout().lock())).await,
    };
    store.close().await;
    let c = result?;
    eprintln!(
        "exported {} requests ({} with feedback, {} escalated by the cascade, {} with logged features){}",
        c.rows,
        c.with_feedback,
        c.escalated,
        c.with_features,
        args.out
            .as_ref()
            .map_or(String::new(), |p| format!(" to {}", p.display()))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn since_accepts_ages_and_unix_seconds() {
        let now = 10_000_000_000;
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("12h", now).unwrap(), now - 12 * 3_600_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert!(parse_since("7w", now).is_err());
        assert!(parse_since("soon", now).is_err());
    }

    #[tokio::test]
    async fn feedback_upserts_and_export_joins_it() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        upsert(&store, "k1", "r1", 0.25, Some("meh")).await.unwrap();
        upsert(&store, "k1", "r1", 0.75, None).await.unwrap();
        let f = get(&store, "k1", "r1").await.unwrap().unwrap();
        assert_eq!((f.score, f.comment), (0.75, None));
        assert!(get(&store, "k2", "r1").await.unwrap().is_none());
        assert!(owners(&store, "r1").await.unwrap().is_empty());
        let mut out = Vec::new();
        assert_eq!(
            export(&store, &ExportOptions::default(), &mut out).await.unwrap(),
            ExportCounts::default()
        );
        assert!(out.is_empty());
    }
}
