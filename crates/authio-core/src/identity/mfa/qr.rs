//! The enrolment URI as a QR code, drawn on the server as inline SVG (the hosted pages work
//! without JavaScript and load nothing from elsewhere).
use crate::CoreError;

/// An `<svg>` element for `text` (no XML declaration: it goes inside an HTML page).
pub fn svg(text: &str) -> Result<String, CoreError> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| CoreError::Internal(format!("QR code: {e}")))?;
    let drawn = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build();
    // The renderer starts with an XML declaration, which has no place inside HTML.
    Ok(match drawn.find("<svg") {
        Some(i) => drawn[i..].to_owned(),
        None => drawn,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn an_svg_element_and_nothing_else() {
        let s = super::svg("otpauth://totp/A:b?secret=MZXW6YTBOI").unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..40]);
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("<path") || s.contains("<rect"));
    }
}
