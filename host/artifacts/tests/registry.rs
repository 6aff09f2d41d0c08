//! Modules pushed to and pulled from a real registry (Debian's docker-registry on loopback).

use flotilla_artifacts::oci::{self, Credentials};
use flotilla_artifacts::testing::Registry;

const MAX: usize = 1 << 20;

fn module(seed: u8) -> Vec<u8> {
    let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
    wasm.extend((0..4096u32).map(|i| (i as u8).wrapping_mul(seed)));
    wasm
}

fn basic(username: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: username.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn a_module_round_trips_by_tag_and_by_manifest_digest() {
    let registry = Registry::anonymous();
    let wasm = module(3);
    let reference = format!("{}/policies/spread:v1", registry.address);
    let url = oci::push(&reference, &wasm, &Credentials::Anonymous)
        .await
        .unwrap();
    assert!(url.contains("/v2/policies/spread/manifests/"), "{url}");

    let pulled = oci::pull(&reference, &Credentials::Anonymous, MAX)
        .await
        .unwrap();
    assert_eq!(pulled.wasm, wasm);
    assert_eq!(pulled.digest, flotilla_artifacts::digest(&wasm));

    // Pinned to the manifest's digest, the same module; a wrong pin is refused.
    let pinned = format!(
        "{}/policies/spread@{}",
        registry.address, pulled.manifest_digest
    );
    let again = oci::pull(&pinned, &Credentials::Anonymous, MAX)
        .await
        .unwrap();
    assert_eq!(again.wasm, wasm);
    let wrong = format!(
        "{}/policies/spread@{}",
        registry.address,
        flotilla_artifacts::digest(b"another manifest")
    );
    let error = oci::pull(&wrong, &Credentials::Anonymous, MAX)
        .await
        .unwrap_err();
    assert!(
        error.0.starts_with(&format!("cannot pull {wrong}")),
        "{error}"
    );

    // A new push to the tag moves it.
    let newer = module(5);
    oci::push(&reference, &newer, &Credentials::Anonymous)
        .await
        .unwrap();
    let pulled = oci::pull(&reference, &Credentials::Anonymous, MAX)
        .await
        .unwrap();
    assert_eq!(pulled.wasm, newer);
}

#[tokio::test]
async fn a_registry_with_basic_auth_lets_in_only_its_user() {
    let registry = Registry::with_user("alice", "s3cret");
    let reference = format!("{}/private/policy:1.0", registry.address);
    let wasm = module(7);
    let error = oci::push(&reference, &wasm, &Credentials::Anonymous)
        .await
        .unwrap_err();
    assert!(error.0.starts_with("cannot push"), "{error}");
    oci::push(&reference, &wasm, &basic("alice", "s3cret"))
        .await
        .unwrap();

    for refused in [Credentials::Anonymous, basic("alice", "wrong")] {
        let error = oci::pull(&reference, &refused, MAX).await.unwrap_err();
        assert!(
            error
                .0
                .starts_with(&format!("cannot pull {reference}: Not authorized")),
            "{error}"
        );
    }
    let pulled = oci::pull(&reference, &basic("alice", "s3cret"), MAX)
        .await
        .unwrap();
    assert_eq!(pulled.wasm, wasm);

    // The same credentials, as a pull secret carries them.
    let secret = format!(
        r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#,
        registry.address
    );
    let credentials =
        Credentials::from_docker_config(secret.as_bytes(), &registry.address).unwrap();
    assert_eq!(credentials, basic("alice", "s3cret"));
}

#[tokio::test]
async fn what_is_not_a_module_or_too_big_is_refused() {
    let registry = Registry::anonymous();
    let wasm = module(11);
    let reference = format!("{}/big/module:v1", registry.address);
    oci::push(&reference, &wasm, &Credentials::Anonymous)
        .await
        .unwrap();
    let error = oci::pull(&reference, &Credentials::Anonymous, 1024)
        .await
        .unwrap_err();
    assert!(
        error.0.contains(&format!(
            "the module is {} bytes, over the limit of 1024 bytes",
            wasm.len()
        )),
        "{error}"
    );

    let missing = format!("{}/big/module:v2", registry.address);
    let error = oci::pull(&missing, &Credentials::Anonymous, MAX)
        .await
        .unwrap_err();
    assert!(
        error.0.starts_with(&format!("cannot pull {missing}")),
        "{error}"
    );
    assert!(error.0.contains("manifest unknown"), "{error}");

    // A container image (a tar layer) is not a module.
    let image = format!("{}/library/app:v1", registry.address);
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let layer = oci_client::client::ImageLayer::new(
        b"not a module".to_vec(),
        "application/vnd.oci.image.layer.v1.tar".into(),
        None,
    );
    let config = oci_client::client::Config::new(
        b"{}".to_vec(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    client
        .push(
            &image.parse().unwrap(),
            &[layer],
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
    let error = oci::pull(&image, &Credentials::Anonymous, MAX)
        .await
        .unwrap_err();
    assert!(
        error
            .0
            .contains("is not a WebAssembly artifact: no layer of type application/wasm"),
        "{error}"
    );
}
