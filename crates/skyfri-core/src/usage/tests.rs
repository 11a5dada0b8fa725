use super::*;

/// Prices with no free tier and round numbers.
fn flat(request_usd_per_million: f64, gb_second_usd: f64, server_monthly_usd: f64) -> Prices {
    Prices {
        request_usd_per_million,
        gb_second_usd,
        free_requests: 0,
        free_gb_seconds: 0.0,
        server_monthly_usd,
    }
}

fn usage(invocations: u64, mib_ms: u64) -> Usage {
    Usage {
        invocations,
        duration_ms: 0,
        mib_ms,
        cpu_us: 0,
    }
}

/// MiB-ms in `n` GB-seconds.
const GBS: u64 = 1024 * 1000;

#[test]
fn charges_against_the_free_tier() {
    let p = Prices::default();
    // (what, usage, requests pico-USD, compute pico-USD) after the free tier.
    let cases = [
        ("zero usage", usage(0, 0), 0, 0),
        ("free tier exactly", usage(1_000_000, 400_000 * GBS), 0, 0),
        ("one request over", usage(1_000_001, 0), 200_000, 0),
        ("one GB-s over", usage(0, 400_001 * GBS), 0, 16_666_700),
        (
            "two million calls of 1 GB-s",
            usage(2_000_000, 2_000_000 * GBS),
            200_000_000_000,
            1_600_000 * 16_666_700,
        ),
        (
            "one MiB-ms over: 16.28 pico rounds down",
            usage(0, 400_000 * GBS + 1),
            0,
            16,
        ),
    ];
    for (what, u, requests, compute) in cases {
        assert_eq!(
            with_free_tier(&u, &p),
            Charge { requests, compute },
            "{what}"
        );
    }
    // At list price the free tier does not apply.
    assert_eq!(
        list_price(&usage(1_000_000, 0), &p).requests,
        200_000_000_000
    );
    assert_eq!(list_price(&Usage::default(), &p).total(), 0);
}

#[test]
fn rounding_is_half_up_to_the_pico_dollar_and_the_cent() {
    // 1,024 pico-USD per GB-s: one MiB-ms is exactly a thousandth of a pico-dollar.
    let p = flat(0.0, 1.024e-9, 0.0);
    for (mib_ms, pico) in [(499, 0), (500, 1), (1_499, 1), (1_500, 2), (GBS, 1_024)] {
        assert_eq!(list_price(&usage(0, mib_ms), &p).compute, pico, "{mib_ms}");
    }
    for (pico, text) in [
        (0, "$0.00"),
        (4_999_999_999, "$0.00"),
        (5_000_000_000, "$0.01"),
        (1_004_999_999_999, "$1.00"),
        (1_005_000_000_000, "$1.01"),
        (999_000_000_000_000, "$999.00"),
        (1_234_567_890_000_000_000, "$1,234,567.89"),
    ] {
        assert_eq!(format_usd(pico), text, "{pico}");
    }
    assert!((usd(16_666_700) - 0.000_016_666_7).abs() < 1e-15);
}

#[test]
fn break_even_volumes() {
    let cases = [
        // Requests only: $100 at $1 per million.
        (
            "requests",
            flat(1.0, 0.0, 100.0),
            usage(10, 1_280),
            Some(100_000_000),
        ),
        (
            "requests after a free million",
            Prices {
                free_requests: 1_000_000,
                ..flat(1.0, 0.0, 100.0)
            },
            usage(10, 1_280),
            Some(101_000_000),
        ),
        // Compute only: $100 at $1 per GB-s, one GB-s per call.
        (
            "compute",
            flat(0.0, 1.0, 100.0),
            usage(4, 4 * GBS),
            Some(100),
        ),
        (
            "no calls to average",
            flat(1.0, 1.0, 100.0),
            usage(0, 0),
            None,
        ),
        (
            "no server cost",
            flat(1.0, 1.0, 0.0),
            usage(10, 1_280),
            None,
        ),
        (
            "nothing is charged",
            flat(0.0, 0.0, 100.0),
            usage(10, 1_280),
            None,
        ),
    ];
    for (what, p, u, want) in cases {
        assert_eq!(break_even(&u, &p), want, "{what}");
    }
}

#[test]
fn break_even_with_lambda_prices_is_the_first_volume_that_costs_as_much() {
    let p = Prices {
        server_monthly_usd: 40.0,
        ..Prices::default()
    };
    // 128 MiB for 100 ms per call.
    let u = usage(1_000, 1_000 * 128 * 100);
    let n = break_even(&u, &p).expect("a volume");
    let at = |n: u64| with_free_tier(&usage(n, n * 128 * 100), &p).total();
    let server = 40_000_000_000_000;
    assert!(at(n) >= server && at(n - 1) < server, "{n}");
    // By hand: past 32 M calls both tiers are used up, and each call costs 0.2 micro-USD
    // plus 0.0125 GB-s: (40 + 0.2 + 6.67) / 0.408e-6 = 114.8 M.
    assert!((114_000_000..116_000_000).contains(&n), "{n}");
}

#[test]
fn months() {
    for good in ["2026-01", "2026-12", "1999-07"] {
        let m: Month = good.parse().expect(good);
        assert_eq!(m.to_string(), good);
    }
    for bad in [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-01",
        "2026/01",
        "",
        "2026-01-01",
        "abcd-ef",
        "1969-12",
    ] {
        let err = bad.parse::<Month>().expect_err(bad);
        assert!(err.contains("YYYY-MM"), "{bad}: {err}");
    }
    let t = DateTime::parse_from_rfc3339("2026-12-31T23:59:59Z")
        .expect("time")
        .with_timezone(&Utc);
    assert_eq!(Month::of(t).to_string(), "2026-12");
    assert!("2026-02".parse::<Month>().ok() < "2026-10".parse::<Month>().ok());
}

#[test]
fn price_files() {
    assert_eq!(Prices::parse("", "p.yaml"), Ok(Prices::default()));
    let p = Prices::parse("server_monthly_usd: 40\nfree_requests: 0\n", "p.yaml").expect("valid");
    assert_eq!(p.server_monthly_usd, 40.0);
    assert_eq!(p.free_requests, 0);
    assert_eq!(p.gb_second_usd, Prices::default().gb_second_usd);
    for (text, names) in [
        ("server_monthly: 40\n", "server_monthly"),
        ("gb_second_usd: -1\n", "gb_second_usd"),
        ("gb_second_usd: .nan\n", "gb_second_usd"),
        ("free_requests: lots\n", "free_requests"),
    ] {
        let err = Prices::parse(text, "p.yaml").expect_err(text);
        assert!(
            err.starts_with("p.yaml: ") && err.contains(names),
            "{text}: {err}"
        );
    }
}

#[test]
fn metered_memory_and_billed_time() {
    let mut spec = FunctionSpec::new("f", "f:latest");
    assert_eq!(metered_mib(&spec), 128);
    spec.requests.memory = Some(64 << 20);
    assert_eq!(metered_mib(&spec), 64);
    spec.limits.memory = Some((256 << 20) + 1);
    assert_eq!(metered_mib(&spec), 257);
    for (nanos, ms) in [
        (0, 0),
        (1, 1),
        (1_000_000, 1),
        (1_000_001, 2),
        (250_400_000, 251),
    ] {
        assert_eq!(billed_ms(nanos), ms, "{nanos}");
    }
    let mut total = Usage::call(128, 10);
    total.add(&Usage::call(256, 5));
    assert_eq!(total.invocations, 2);
    assert_eq!(total.mib_ms, 128 * 10 + 256 * 5);
    assert!((Usage::call(1024, 1000).gb_seconds() - 1.0).abs() < 1e-12);
}
