//! The builder in any feature set: a layer whose feature is compiled in is
//! built; one whose feature is not fails with `FeatureDisabled` naming it.
//! (`cargo test -p laminar-state-layers --no-default-features --test
//! features` runs the other branch.)

use std::sync::Arc;

use laminar_state_api::StateBackend;
use laminar_state_layers::{LayerConfig, LayerError, Target, layer};
use laminar_state_memory::MemoryBackend;

fn compiled_in(feature: &str) -> bool {
    match feature {
        "tracing" => cfg!(feature = "tracing"),
        "metrics" => cfg!(feature = "metrics"),
        "compression" => cfg!(feature = "compression"),
        _ => cfg!(feature = "encryption"),
    }
}

#[test]
fn a_layer_whose_feature_is_missing_is_named() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new("a", 1));
    let target = Target::new("memory", "a", 1 << 20);
    for (query, feature) in [
        ("tracing=true", "tracing"),
        ("metrics=true", "metrics"),
        ("compression=lz4", "compression"),
        (
            "encryption_key_id=1&encryption_key_env=LAYERS_TEST_UNSET_KEY",
            "encryption",
        ),
    ] {
        let (config, _) = LayerConfig::from_query(query).unwrap();
        match layer(backend.clone(), &config, &target) {
            Err(LayerError::FeatureDisabled { layer, feature: f }) => {
                assert_eq!((layer, f), (feature, feature));
                assert!(!compiled_in(feature), "{feature} is compiled in");
                let message = LayerError::FeatureDisabled { layer, feature: f }.to_string();
                assert!(message.contains(&format!("enable the `{feature}` feature")));
            }
            // Encryption is the one layer that needs more than its feature:
            // a key, here missing from the environment.
            Err(LayerError::Invalid { setting, .. }) => {
                assert_eq!(feature, "encryption");
                assert!(compiled_in(feature));
                assert!(setting.contains("LAYERS_TEST_UNSET_KEY"), "{setting}");
            }
            Ok(_) => assert!(compiled_in(feature), "{feature} is not compiled in"),
            Err(other) => panic!("{query}: {other}"),
        }
    }
}

#[test]
fn the_defaults_never_fail() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new("a", 1));
    let stack = layer(
        backend,
        &LayerConfig::default(),
        &Target::new("memory", "a", 1 << 20),
    );
    assert!(stack.is_ok());
    assert_eq!(LayerConfig::default().stored_overhead(), 0);
}
