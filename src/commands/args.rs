//! Range checks for numeric command-line flags, as clap value parsers: a bad value is refused
//! while the arguments are parsed, with the flag and the allowed range in the message, before
//! any work starts.

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("'{s}' is not a number"))
}

fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = number(s)?;
    if !x.is_finite() {
        return Err(format!("{s} is not a finite number"));
    }
    Ok(x)
}

/// An integer >= 1 (batch sizes, intervals, counts).
pub fn positive_usize(s: &str) -> Result<usize, String> {
    let x: usize = number(s)?;
    if x == 0 {
        return Err("must be at least 1".into());
    }
    Ok(x)
}

/// An integer >= 1 (step counts and intervals).
pub fn positive_u64(s: &str) -> Result<u64, String> {
    let x: u64 = number(s)?;
    if x == 0 {
        return Err("must be at least 1".into());
    }
    Ok(x)
}

/// A finite number >= 0 (learning rates, weight decay).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if x < 0.0 {
        return Err(format!("{x} is negative; expected a number >= 0"));
    }
    Ok(x)
}

/// A number in [0, 1] (probabilities, ratios).
pub fn unit_closed(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} is outside [0, 1]"));
    }
    Ok(x)
}

/// A number in [0, 1) (Adam betas).
pub fn unit_half_open(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("{x} is outside [0, 1)"));
    }
    Ok(x)
}

/// A number in (0, 1) (EMA decay).
pub fn unit_open(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(x > 0.0 && x < 1.0) {
        return Err(format!("{x} is outside (0, 1)"));
    }
    Ok(x)
}

/// A finite rating >= 0 (f32).
pub fn rating(s: &str) -> Result<f32, String> {
    let x = non_negative(s)?;
    if x > f32::MAX as f64 {
        return Err(format!("{x} is too large"));
    }
    Ok(x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(positive_usize("0").is_err() && positive_usize("-1").is_err());
        assert_eq!(positive_usize("3"), Ok(3));
        assert!(non_negative("-1e-9").is_err() && non_negative("nan").is_err());
        assert!(unit_open("1").is_err() && unit_open("0").is_err() && unit_open("0.999").is_ok());
        assert!(unit_half_open("1").is_err() && unit_half_open("0").is_ok());
        assert!(unit_closed("1.01").is_err() && unit_closed("1").is_ok());
        assert!(rating("inf").is_err() && rating("48").is_ok());
    }
}
