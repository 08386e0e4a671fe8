//! What a response cost, in USD, from the model's pricing in config. Pure.
//!
//! Prices are per million tokens. Cached input (served from the provider's prompt cache) is
//! charged at `cached_input_per_million`, or at the ordinary input price when the model sets
//! none; the rest of the input at `input_per_million`; every output token (reasoning ones
//! included, as providers bill them) at `output_per_million`.
//!
//! Costs are rounded to the nearest nano-dollar (1e-9 USD). Far below any provider's
//! smallest charge (a token of the cheapest models costs ~1e-8 USD), it makes a cost a
//! short decimal, so that sums over many records are stable whatever their order and survive
//! a round trip through the store's text or decimal columns unchanged.

use crate::config::{Model, Pricing};

use super::TokenUsage;

/// Costs are whole multiples of one USD divided by this (nano-dollars).
const STEPS_PER_USD: f64 = 1e9;

/// What `usage` costs at `pricing`, in USD rounded to the nano-dollar. A non-finite result
/// (a price of NaN or infinity in config) is 0.
pub fn cost_usd(pricing: &Pricing, usage: &TokenUsage) -> f64 {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let uncached = usage.input_tokens - cached;
    let cached_price = pricing
        .cached_input_per_million
        .unwrap_or(pricing.input_per_million);
    let micro = uncached as f64 * pricing.input_per_million
        + cached as f64 * cached_price
        + usage.output_tokens as f64 * pricing.output_per_million;
    let usd = micro / 1_000_000.0;
    if !usd.is_finite() {
        return 0.0;
    }
    // Dividing the whole number of steps (exact in f64) by 1e9 gives the f64 nearest the
    // decimal, so `0.0109725` reads back as written.
    (usd * STEPS_PER_USD).round() / STEPS_PER_USD
}

/// What `usage` costs for the configured model named `model` (matched exactly, as the
/// request named it): 0 when there is no model, it is not configured, or it has no pricing.
pub fn cost_for(models: &[Model], model: Option<&str>, usage: &TokenUsage) -> f64 {
    let Some(model) = model else {
        return 0.0;
    };
    models
        .iter()
        .find(|m| m.name == model)
        .and_then(|m| m.pricing.as_ref())
        .map_or(0.0, |pricing| cost_usd(pricing, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cached: u64, reasoning: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            reasoning_tokens: reasoning,
        }
    }

    fn pricing(input: f64, output: f64, cached: Option<f64>) -> Pricing {
        Pricing {
            input_per_million: input,
            output_per_million: output,
            cached_input_per_million: cached,
        }
    }

    /// Through config's own parser, so that fields added to `Model` later keep this working.
    fn model(yaml: &str) -> Model {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn cached_input_at_its_own_price() {
        // gpt-4o: $2.50 in, $1.25 cached in, $10 out.
        let p = pricing(2.5, 10.0, Some(1.25));
        // 93 × 2.5 + 1024 × 1.25 + 946 × 10 = 10972.5 micro-dollars.
        assert_eq!(cost_usd(&p, &usage(1117, 946, 1024, 704)), 0.0109725);
        assert_eq!(cost_usd(&p, &usage(1_000_000, 0, 0, 0)), 2.5);
        assert_eq!(cost_usd(&p, &usage(1_000_000, 0, 1_000_000, 0)), 1.25);
        assert_eq!(cost_usd(&p, &usage(0, 1_000_000, 0, 0)), 10.0);
        assert_eq!(cost_usd(&p, &TokenUsage::default()), 0.0);
    }

    #[test]
    fn cached_input_at_the_input_price_when_unset() {
        let p = pricing(3.0, 15.0, None);
        // 2125 × 3 + 42 × 15 = 7005 micro-dollars.
        assert_eq!(cost_usd(&p, &usage(2125, 42, 2000, 0)), 0.007005);
    }

    #[test]
    fn rounded_to_the_nano_dollar() {
        // gpt-4o-mini: $0.15 in, $0.60 out. One input token is 1.5e-7 USD.
        let p = pricing(0.15, 0.6, Some(0.075));
        assert_eq!(cost_usd(&p, &usage(1, 0, 0, 0)), 0.00000015);
        // 0.075 micro-dollars is 7.5e-8 USD: exactly on the grid.
        assert_eq!(cost_usd(&p, &usage(1, 0, 1, 0)), 0.000000075);
        // 1 token at $0.0001 per million is 1e-10 USD: below the step, rounds to 0.
        assert_eq!(
            cost_usd(&pricing(0.0001, 0.0, None), &usage(1, 0, 0, 0)),
            0.0
        );
        // 7 tokens at $0.0003 per million is 2.1e-9 USD, rounds to 2e-9.
        assert_eq!(
            cost_usd(&pricing(0.0003, 0.0, None), &usage(7, 0, 0, 0)),
            0.000000002
        );
        // Summing many rounded costs stays on the grid closely.
        let one = cost_usd(&p, &usage(333, 77, 100, 0));
        // 233 × 0.15 + 100 × 0.075 + 77 × 0.6 = 34.95 + 7.5 + 46.2 = 88.65 micro-dollars.
        assert_eq!(one, 0.00008865);
        let total: f64 = (0..1000).map(|_| one).sum();
        assert!((total - 0.08865).abs() < 1e-12, "{total}");
    }

    #[test]
    fn cached_more_than_input_is_clamped_and_bad_prices_cost_nothing() {
        let p = pricing(2.0, 8.0, Some(0.5));
        assert_eq!(cost_usd(&p, &usage(10, 0, 50, 0)), 0.000005);
        assert_eq!(
            cost_usd(&pricing(f64::NAN, 1.0, None), &usage(1, 1, 0, 0)),
            0.0
        );
        assert_eq!(
            cost_usd(&pricing(f64::INFINITY, 1.0, None), &usage(1, 1, 0, 0)),
            0.0
        );
    }

    #[test]
    fn cost_for_finds_the_model() {
        let models = vec![
            model(
                "name: gpt-4o\npricing: {input_per_million: 2.5, output_per_million: 10, cached_input_per_million: 1.25}",
            ),
            model("name: gpt-4o-mini\npricing: {input_per_million: 0.15, output_per_million: 0.6}"),
            model("name: local-llama"),
        ];
        let u = usage(1000, 100, 0, 0);
        assert_eq!(cost_for(&models, Some("gpt-4o"), &u), 0.0035);
        assert_eq!(cost_for(&models, Some("gpt-4o-mini"), &u), 0.00021);
        assert_eq!(cost_for(&models, Some("local-llama"), &u), 0.0);
        assert_eq!(cost_for(&models, Some("gpt-4o-2024-08-06"), &u), 0.0);
        assert_eq!(cost_for(&models, None, &u), 0.0);
        assert_eq!(cost_for(&[], Some("gpt-4o"), &u), 0.0);
    }
}
