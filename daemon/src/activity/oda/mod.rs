//! The observatory data archive (ODA): where SBDs come from and SBIs go.
