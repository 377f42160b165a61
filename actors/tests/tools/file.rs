//! The `file` tool in a real directory: every operation inside the workspace, the read cap,
//! and every way out of it (`..`, absolute paths, symlinks) refused.

use super::*;

#[tokio::test]
async fn write_read_append_list_delete_inside_the_workspace() {
    let (tools, dir) = tools_with(|_| {});
    let out = run(
        &tools,
        "file",
        json!({"op": "write", "path": "a/b.txt", "content": "hello"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.bytes, 5);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ws/a/b.txt")).unwrap(),
        "hello"
    );
    run(
        &tools,
        "file",
        json!({"op": "append", "path": "a/b.txt"}),
        Some(" world"),
    )
    .await
    .unwrap();
    let out = run(
        &tools,
        "file",
        json!({"op": "read", "path": "./a/b.txt"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.text, "hello world");
    assert!(!out.truncated);

    run(
        &tools,
        "file",
        json!({"op": "write", "path": "data.json", "content": "[1,2]"}),
        None,
    )
    .await
    .unwrap();
    let out = run(
        &tools,
        "file",
        json!({"op": "read", "path": "data.json"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.json, Some(json!([1, 2])));

    let out = run(&tools, "file", json!({"op": "list"}), None)
        .await
        .unwrap();
    assert_eq!(out.text, "a/\ndata.json\n");
    let out = run(&tools, "file", json!({"op": "list", "path": "a"}), None)
        .await
        .unwrap();
    assert_eq!(
        out.json,
        Some(json!([{"name": "b.txt", "kind": "file", "size": 11}]))
    );

    run(
        &tools,
        "file",
        json!({"op": "delete", "path": "a/b.txt"}),
        None,
    )
    .await
    .unwrap();
    assert!(!dir.path().join("ws/a/b.txt").exists());
    let err = run(
        &tools,
        "file",
        json!({"op": "read", "path": "a/b.txt"}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Failed(_)), "{err:?}");
    run(&tools, "file", json!({"op": "delete", "path": "a"}), None)
        .await
        .unwrap();
    assert!(!dir.path().join("ws/a").exists());
    assert!(dir.path().join("ws").is_dir(), "the workspace itself stays");

    let err = run(&tools, "file", json!({"op": "write", "path": "x"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("content")),
        "{err:?}"
    );
    let err = run(&tools, "file", json!({"op": "delete", "path": "."}), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ToolError::InvalidArgs(_)), "{err:?}");
}

#[tokio::test]
async fn reads_are_capped() {
    let (tools, dir) = tools_with(|c| c.max_output_bytes = 1000);
    std::fs::write(dir.path().join("ws/big"), vec![b'y'; 5000]).unwrap();
    let out = run(&tools, "file", json!({"op": "read", "path": "big"}), None)
        .await
        .unwrap();
    assert!(out.truncated);
    assert_eq!(out.text.len(), 1000);
    assert_eq!(out.bytes, 5000);
}

#[tokio::test]
async fn paths_out_of_the_workspace_are_denied() {
    let (tools, dir) = tools_with(|_| {});
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();

    for args in [
        json!({"op": "write", "path": "../escape", "content": "x"}),
        json!({"op": "read", "path": "a/../../outside/secret"}),
        json!({"op": "read", "path": "/etc/passwd"}),
    ] {
        let err = tools.validate("file", &args).unwrap_err();
        assert!(matches!(err, ToolError::Denied(_)), "{err:?}");
        let err = run(&tools, "file", args, None).await.unwrap_err();
        assert!(matches!(err, ToolError::Denied(_)), "{err:?}");
    }
    assert!(!dir.path().join("escape").exists());

    let ws = dir.path().join("ws");
    std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ws.join("passwd")).unwrap();
    std::os::unix::fs::symlink(outside.join("not-yet"), ws.join("dangling")).unwrap();
    for args in [
        json!({"op": "read", "path": "link/secret"}),
        json!({"op": "read", "path": "passwd"}),
        json!({"op": "list", "path": "link"}),
        json!({"op": "write", "path": "link/new", "content": "x"}),
        json!({"op": "write", "path": "link/deeper/new", "content": "x"}),
        json!({"op": "append", "path": "dangling", "content": "x"}),
        json!({"op": "delete", "path": "link/secret"}),
    ] {
        let err = run(&tools, "file", args.clone(), None).await.unwrap_err();
        assert!(
            matches!(&err, ToolError::Denied(m) if m.contains("outside")),
            "{args}: {err:?}"
        );
    }
    assert!(!outside.join("new").exists() && !outside.join("deeper").exists());
    assert!(!outside.join("not-yet").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );

    // Deleting the link removes the link, not what it points to.
    run(
        &tools,
        "file",
        json!({"op": "delete", "path": "link"}),
        None,
    )
    .await
    .unwrap();
    assert!(!ws.join("link").exists());
    assert!(outside.join("secret").exists());
}

/// A hard link made in the workspace to a file outside it can be neither read nor
/// overwritten (the attack: link, then read or write through the tool).
#[tokio::test]
async fn hard_links_are_refused_for_read_write_and_append() {
    let (tools, dir) = tools_with(|_| {});
    let outside = dir.path().join("outside-secret");
    std::fs::write(&outside, "secret").unwrap();
    std::fs::hard_link(&outside, dir.path().join("ws/linked")).unwrap();
    for args in [
        json!({"op": "read", "path": "linked"}),
        json!({"op": "write", "path": "linked", "content": "pwned"}),
        json!({"op": "append", "path": "linked", "content": "pwned"}),
    ] {
        let err = run(&tools, "file", args.clone(), None).await.unwrap_err();
        assert!(
            matches!(&err, ToolError::Denied(m) if m.contains("hard links")),
            "{args}: {err:?}"
        );
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
}

/// The kernel refuses links while it resolves the path (openat2 RESOLVE_NO_SYMLINKS from a
/// descriptor of the workspace), so a link to a directory or to a file outside, or one
/// swapped in after the step was checked, is never followed, for reading or writing.
#[tokio::test]
async fn links_are_refused_by_the_kernel_for_read_and_write() {
    let (tools, dir) = tools_with(|_| {});
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    let ws = dir.path().join("ws");
    std::os::unix::fs::symlink(&outside, ws.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), ws.join("to-file")).unwrap();
    for args in [
        json!({"op": "read", "path": "to-file"}),
        json!({"op": "read", "path": "to-dir/secret"}),
        json!({"op": "write", "path": "to-file", "content": "pwned"}),
        json!({"op": "append", "path": "to-file", "content": "pwned"}),
        json!({"op": "write", "path": "to-dir/secret", "content": "pwned"}),
        json!({"op": "write", "path": "to-dir/new/deeper", "content": "pwned"}),
    ] {
        // The path itself is fine; only where it leads is not.
        tools.validate("file", &args).unwrap();
        let err = run(&tools, "file", args.clone(), None).await.unwrap_err();
        assert!(
            matches!(&err, ToolError::Denied(m) if m.contains("symlink") && m.contains("openat2")),
            "{args}: {err:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(!outside.join("new").exists());

    // A link swapped in for a directory the tool made earlier is refused the same way.
    run(
        &tools,
        "file",
        json!({"op": "write", "path": "sub/f", "content": "x"}),
        None,
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(ws.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("sub")).unwrap();
    for args in [
        json!({"op": "read", "path": "sub/secret"}),
        json!({"op": "write", "path": "sub/f", "content": "x"}),
    ] {
        let err = run(&tools, "file", args.clone(), None).await.unwrap_err();
        assert!(
            matches!(&err, ToolError::Denied(m) if m.contains("RESOLVE_NO_SYMLINKS")),
            "{args}: {err:?}"
        );
    }
    assert!(!outside.join("f").exists());
}
