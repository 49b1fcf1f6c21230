//! Prices and money. Money is integer nano-dollars ([`Nanos`]); prices are integer micro-dollars per
//! million tokens, so the cost of any token count is exact (no float is ever accumulated).

use serde::{Deserialize, Serialize};

use crate::openai::Usage;

/// An amount of US dollars in units of 1e-9 USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    /// Converts a configured dollar amount, rounding to the nearest nano-dollar. Negative and
    /// non-finite inputs become zero (config validation rejects them before this is reached).
    pub fn from_usd(usd: f64) -> Nanos {
        if usd.is_finite() && usd > 0.0 {
            Nanos((usd * 1e9).round() as u64)
        } else {
            Nanos(0)
        }
    }

    /// For display and JSON only; never add these floats up.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e9
    }

    pub fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }
}

impl std::ops::Add for Nanos {
    type Output = Nanos;
    fn add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(rhs.0))
    }
}

impl std::ops::AddAssign for Nanos {
    fn add_assign(&mut self, rhs: Nanos) {
        *self = *self + rhs;
    }
}

impl std::fmt::Display for Nanos {
    /// Dollars with nine decimals, trailing zeros trimmed (at least two decimals kept).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // On every response (headers, log line): digits on the stack, no allocation.
        let mut frac = self.0 % 1_000_000_000;
        let mut digits = [b'0'; 9];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        let mut len = digits.len();
        while len > 2 && digits[len - 1] == b'0' {
            len -= 1;
        }
        write!(f, "{}.", self.0 / 1_000_000_000)?;
        f.write_str(std::str::from_utf8(&digits[..len]).map_err(|_| std::fmt::Error)?)
    }
}

/// The price of one deployment. Per-token prices are micro-dollars per million tokens
/// (so $2.50 / 1M tokens is 2_500_000), which makes `tokens * price` exact in pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
    /// Price of prompt tokens served from the provider's prompt cache, when it has one.
    pub cached_input_micros_per_mtok: Option<u64>,
    /// A flat price per request (e.g. a local GPU's amortised cost), added to the token cost.
    pub per_request: Nanos,
}

impl Price {
    /// A price from dollars per million tokens.
    pub fn per_mtok(input_usd: f64, output_usd: f64) -> Price {
        Price {
            input_micros_per_mtok: usd_to_micros(input_usd),
            output_micros_per_mtok: usd_to_micros(output_usd),
            cached_input_micros_per_mtok: None,
            per_request: Nanos::ZERO,
        }
    }

    pub fn with_input(mut self, usd_per_mtok: f64) -> Price {
        self.input_micros_per_mtok = usd_to_micros(usd_per_mtok);
        self
    }

    pub fn with_output(mut self, usd_per_mtok: f64) -> Price {
        self.output_micros_per_mtok = usd_to_micros(usd_per_mtok);
        self
    }

    pub fn with_cached_input(mut self, usd_per_mtok: f64) -> Price {
        self.cached_input_micros_per_mtok = Some(usd_to_micros(usd_per_mtok));
        self
    }

    pub fn is_free(&self) -> bool {
        self.input_micros_per_mtok == 0 && self.output_micros_per_mtok == 0 && self.per_request.0 == 0
    }

    /// The exact cost of a usage, rounded half-up to the nano-dollar once at the end.
    pub fn cost(&self, usage: &Usage, cached_prompt_tokens: u64) -> Nanos {
        let cached = cached_prompt_tokens.min(usage.prompt_tokens);
        let cached_price = self.cached_input_micros_per_mtok.unwrap_or(self.input_micros_per_mtok);
        // micro-dollars per 1e6 tokens == pico-dollars per token.
        let pico = u128::from(usage.prompt_tokens - cached) * u128::from(self.input_micros_per_mtok)
            + u128::from(cached) * u128::from(cached_price)
            + u128::from(usage.completion_tokens) * u128::from(self.output_micros_per_mtok);
        let nanos = (pico + 500) / 1000;
        Nanos(u64::try_from(nanos).unwrap_or(u64::MAX)) + self.per_request
    }
}

fn usd_to_micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round() as u64
    } else {
        0
    }
}

/// Published list prices (USD per 1M tokens: input, output, cached input) of common public models,
/// used when a deployment's config gives no price. Matched on the longest prefix of the upstream model
/// name, so dated snapshots ("gpt-4o-2024-08-06") find their family.
const KNOWN: &[(&str, f64, f64, Option<f64>)] = &[
    ("gpt-4o-mini", 0.15, 0.60, Some(0.075)),
    ("gpt-4o", 2.50, 10.00, Some(1.25)),
    ("gpt-4.1-nano", 0.10, 0.40, Some(0.025)),
    ("gpt-4.1-mini", 0.40, 1.60, Some(0.10)),
    ("gpt-4.1", 2.00, 8.00, Some(0.50)),
    ("gpt-4-turbo", 10.00, 30.00, None),
    ("gpt-4", 30.00, 60.00, None),
    ("gpt-3.5-turbo", 0.50, 1.50, None),
    ("o1-mini", 1.10, 4.40, Some(0.55)),
    ("o1", 15.00, 60.00, Some(7.50)),
    ("o3-mini", 1.10, 4.40, Some(0.55)),
    ("o4-mini", 1.10, 4.40, Some(0.275)),
    ("claude-3-5-haiku", 0.80, 4.00, Some(0.08)),
    ("claude-3-haiku", 0.25, 1.25, Some(0.03)),
    ("claude-3-5-sonnet", 3.00, 15.00, Some(0.30)),
    ("claude-3-7-sonnet", 3.00, 15.00, Some(0.30)),
    ("claude-sonnet-4", 3.00, 15.00, Some(0.30)),
    ("claude-opus-4", 15.00, 75.00, Some(1.50)),
    ("claude-3-opus", 15.00, 75.00, Some(1.50)),
];

/// The built-in list price of a public model, if OptiRoute knows it.
pub fn known_price(model: &str) -> Option<Price> {
    KNOWN
        .iter()
        .filter(|(prefix, ..)| model.starts_with(prefix))
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|&(_, i, o, c)| {
            let p = Price::per_mtok(i, o);
            match c {
                Some(c) => p.with_cached_input(c),
                None => p,
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cost_is_exact() {
        let p = Price::per_mtok(0.15, 0.60);
        // 10 * 0.15e-6 + 20 * 0.6e-6 = 1.5e-6 + 12e-6 = 13.5e-6 USD = 13_500 nanos
        assert_eq!(p.cost(&Usage::new(10, 20), 0), Nanos(13_500));
        // A million requests of one token cost exactly what one request of a million tokens costs.
        let one = p.cost(&Usage::new(1, 0), 0);
        assert_eq!(Nanos(one.0 * 1_000_000), p.cost(&Usage::new(1_000_000, 0), 0));
    }

    #[test]
    fn cached_input_and_per_request() {
        let mut p = Price::per_mtok(2.5, 10.0).with_cached_input(1.25);
        p.per_request = Nanos::from_usd(0.001);
        let c = p.cost(&Usage::new(1000, 100), 400);
        // 600 * 2.5e-6 + 400 * 1.25e-6 + 100 * 10e-6 + 0.001 = 0.0015 + 0.0005 + 0.001 + 0.001
        assert_eq!(c, Nanos::from_usd(0.004));
    }

    #[test]
    fn known_prices_match_longest_prefix() {
        assert_eq!(
            known_price("gpt-4o-mini-2024-07-18").unwrap().input_micros_per_mtok,
            150_000
        );
        assert_eq!(
            known_price("gpt-4o-2024-08-06").unwrap().input_micros_per_mtok,
            2_500_000
        );
        assert_eq!(known_price("gpt-4-0613").unwrap().input_micros_per_mtok, 30_000_000);
        assert!(known_price("llama3").is_none());
    }

    #[test]
    fn display() {
        assert_eq!(Nanos(0).to_string(), "0.00");
        assert_eq!(Nanos(13_500).to_string(), "0.0000135");
        assert_eq!(Nanos::from_usd(12.5).to_string(), "12.50");
        assert_eq!(Nanos(1_000_000_001).to_string(), "1.000000001");
        assert_eq!(Nanos(u64::MAX).to_string(), "18446744073.709551615");
        // Against the obvious string-based rendering, over a spread of magnitudes.
        let reference = |n: u64| {
            let frac = format!("{:09}", n % 1_000_000_000);
            let trimmed = frac.trim_end_matches('0');
            let shown = if trimmed.len() < 2 { &frac[..2] } else { trimmed };
            format!("{}.{shown}", n / 1_000_000_000)
        };
        let mut n = 1u64;
        while n < u64::MAX / 7 {
            for v in [n, n - 1, n * 10, n + 123_456] {
                assert_eq!(Nanos(v).to_string(), reference(v), "{v}");
            }
            n = n * 7 + 3;
        }
    }
}
