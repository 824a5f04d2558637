/* config: the built-in defaults, a full file, and every kind of error
 * naming file, line and key. Each test writes its INI text to a temp file. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char path[64];
static struct cqrsd_config cfg;
static char err[512];

static int load(const char *text)
{
    strcpy(path, "/tmp/test_config.XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    err[0] = '\0';
    int rc = config_load(path, &cfg, err, sizeof err);
    unlink(path);
    return rc;
}

/* The error names "<path>:<line>:" and contains `what`. */
static void expect_error(const char *text, int line, const char *what)
{
    cr_assert_eq(load(text), -1, "accepted:\n%s", text);
    char where[96];
    snprintf(where, sizeof where, "%s:%d: ", path, line);
    cr_assert(strncmp(err, where, strlen(where)) == 0, "error \"%s\" does not start with \"%s\"",
              err, where);
    cr_assert_not_null(strstr(err, what), "error \"%s\" does not say \"%s\"", err, what);
}

Test(config, defaults_are_wallet_then_account_one_for_one)
{
    config_defaults(&cfg);
    cr_assert_eq(cfg.strategy, SUP_ONE_FOR_ONE);
    cr_assert_eq(cfg.intensity, 5);
    cr_assert_eq(cfg.period_s, 10);
    cr_assert_eq(cfg.heartbeat_ms, 1000);
    cr_assert_eq(cfg.heartbeat_timeout_ms, 3000);
    cr_assert_eq(cfg.standby, 1);
    cr_assert_eq(cfg.n_children, 3);
    cr_assert_str_eq(cfg.children[0].name, "wallet");
    cr_assert_str_eq(cfg.children[1].name, "account");
    cr_assert_str_eq(cfg.children[2].name, "readmodel");
    cr_assert_eq(cfg.children[0].kind, CHILD_WORKER);
    cr_assert_eq(cfg.children[2].kind, CHILD_PROJECTOR);
    cr_assert_eq(cfg.children[0].restart, RESTART_PERMANENT);
    cr_assert_eq(cfg.children[1].shutdown_ms, 5000);
}

Test(config, full_file_with_comments_and_empty_child_section)
{
    cr_assert_eq(load("; cqrsd\n"
                      "[supervisor]\n"
                      "strategy = rest_for_one   ; inline comment\n"
                      "intensity = 0\n"
                      "period = 30\n"
                      "shutdown_timeout_ms = 700\n"
                      "start_timeout_ms = 900\n"
                      "heartbeat_ms = 0\n"
                      "heartbeat_timeout_ms = 50\n"
                      "standby = false\n"
                      "\n"
                      "[child account]\n"
                      "restart = temporary\n"
                      "shutdown_ms = brutal_kill\n"
                      "[child wallet]\n"),
                 0, "%s", err);
    cr_assert_eq(cfg.strategy, SUP_REST_FOR_ONE);
    cr_assert_eq(cfg.intensity, 0);
    cr_assert_eq(cfg.period_s, 30);
    cr_assert_eq(cfg.start_timeout_ms, 900);
    cr_assert_eq(cfg.heartbeat_ms, 0);
    cr_assert_eq(cfg.standby, 0);
    cr_assert_eq(cfg.n_children, 2);
    /* file order, not registry order */
    cr_assert_str_eq(cfg.children[0].name, "account");
    cr_assert_eq(cfg.children[0].restart, RESTART_TEMPORARY);
    cr_assert_eq(cfg.children[0].shutdown_ms, CONFIG_BRUTAL_KILL);
    /* the empty section still makes a child, with the supervisor's default */
    cr_assert_str_eq(cfg.children[1].name, "wallet");
    cr_assert_eq(cfg.children[1].restart, RESTART_PERMANENT);
    cr_assert_eq(cfg.children[1].shutdown_ms, 700);
}

Test(config, storage_section_and_worker_args)
{
    cr_assert_eq(load("[storage]\nfsync = batch\nbatch_interval_ms = 5\ncheckpoint_ms = 200\n"
                      "journal_segment_mb = 8\njournal_retention_mb = 16\njournal_retention_s = 60\n"
                      "[child wallet]\n"), 0, "%s", err);
    cr_assert_eq(cfg.storage.fsync, FSYNC_BATCH);
    char *argv[CONFIG_WORKER_ARGS];
    char buf[256];
    size_t n = config_worker_args(&cfg.storage, argv, buf, sizeof buf);
    cr_assert_eq(n, 20);
    const char *want[] = { "--fsync", "batch", "--batch-interval-ms", "5", "--checkpoint-ms", "200",
                           "--segment-mb", "8", "--retention-mb", "16", "--retention-s", "60",
                           "--snapshot-every", "1000", "--open-files", "1024",
                           "--max-aggregates", "1000000", "--idle-timeout-s", "3600" };
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(argv[i], want[i]);
}

Test(config, server_section)
{
    cr_assert_eq(load("[server]\nsocket_mode = 0600\nsocket_group = adm\nallow_uids = 1000, 1001\n"
                      "allow_gids =\nadmin_uids = 0\nmax_connections = 4\nmax_frame_bytes = 4096\n"
                      "max_inflight_per_conn = 8\nworker_queue = 5\nread_timeout_ms = 300\n"
                      "max_string_bytes = 200\nmax_metadata_entries = 2\nmax_metadata_bytes = 64\n"
                      "log_level = debug\n[child wallet]\n"), 0, "%s", err);
    cr_assert_eq(cfg.server.socket_mode, 0600);
    cr_assert_str_eq(cfg.server.socket_group, "adm");
    cr_assert_eq(cfg.server.n_allow_uids, 2);
    cr_assert_eq(cfg.server.allow_uids[1], 1001);
    cr_assert_eq(cfg.server.n_allow_gids, 0);
    cr_assert_eq(cfg.server.n_admin_uids, 1);
    cr_assert_eq(cfg.server.max_connections, 4);
    cr_assert_eq(cfg.server.worker_queue, 5);
    cr_assert_eq(cfg.server.read_timeout_ms, 300);
    cr_assert_eq(cfg.server.max_metadata_bytes, 64);
    expect_error("[server]\nsocket_mode = 0999\n[child wallet]\n", 2, "socket_mode");
    expect_error("[server]\nallow_uids = 1, x\n[child wallet]\n", 2, "allow_uids");
    expect_error("[server]\nmax_connections = 0\n[child wallet]\n", 2, "max_connections");
    expect_error("[server]\nlog_level = loud\n[child wallet]\n", 2, "log_level");
}

Test(config, transient_and_explicit_shutdown)
{
    cr_assert_eq(load("[child wallet]\nrestart = transient\nshutdown_ms = 250\n"), 0, "%s", err);
    cr_assert_eq(cfg.n_children, 1);
    cr_assert_eq(cfg.children[0].restart, RESTART_TRANSIENT);
    cr_assert_eq(cfg.children[0].shutdown_ms, 250);
}

Test(config, unknown_supervisor_key)
{
    expect_error("[supervisor]\nintensity = 2\nfoo = 1\n[child wallet]\n", 3,
                 "unknown key \"foo\" in [supervisor]");
}

Test(config, unknown_child_key)
{
    expect_error("[child wallet]\nrestart = permanent\nrestrat = permanent\n", 3,
                 "unknown key \"restrat\" in [child wallet]");
}

Test(config, bad_numbers)
{
    expect_error("[supervisor]\nintensity = abc\n[child wallet]\n", 2, "intensity");
    expect_error("[supervisor]\nperiod = 0\n[child wallet]\n", 2, "period");
    expect_error("[supervisor]\nintensity = -1\n[child wallet]\n", 2, "intensity");
    expect_error("[supervisor]\n\nheartbeat_ms = 10x\n[child wallet]\n", 3, "heartbeat_ms");
    expect_error("[child wallet]\nshutdown_ms = soon\n", 2, "shutdown_ms");
}

Test(config, bad_words)
{
    expect_error("[supervisor]\nstrategy = one_for_some\n[child wallet]\n", 2, "strategy");
    expect_error("[child wallet]\nrestart = sometimes\n", 2, "restart");
    expect_error("[supervisor]\nstandby = yes\n[child wallet]\n", 2, "standby");
}

Test(config, unknown_type_duplicate_child_unknown_section)
{
    expect_error("[child wallet]\n[child nope]\n", 2, "\"nope\"");
    expect_error("[child wallet]\n[child account]\n[child wallet]\n", 3, "twice");
    expect_error("[child wallet]\n[store]\nfsync = always\n", 2, "unknown section [store]");
    expect_error("[storage]\nfsync = sometimes\n[child wallet]\n", 2, "fsync");
    expect_error("[storage]\ncheckpoint_ms = 0\n[child wallet]\n", 2, "checkpoint_ms");
    expect_error("[storage]\nfsnyc = always\n[child wallet]\n", 2, "unknown key \"fsnyc\" in [storage]");
}

Test(config, projector_child)
{
    cr_assert_eq(load("[child wallet]\n[child views]\nkind = projector\nrestart = transient\n"),
                 0, "%s", err);
    cr_assert_eq(cfg.n_children, 2);
    cr_assert_str_eq(cfg.children[1].name, "views");
    cr_assert_eq(cfg.children[1].kind, CHILD_PROJECTOR);
    cr_assert_eq(cfg.children[1].restart, RESTART_TRANSIENT);
    cr_assert_eq(cfg.children[0].kind, CHILD_WORKER);
    expect_error("[child wallet]\n[child views]\nkind = viewer\n", 3, "kind");
    expect_error("[child wallet]\n[child a]\nkind = projector\n[child b]\nkind = projector\n",
                 4, "second projector");
    expect_error("[child wallet]\n[child bad/name]\n", 2, "name");
}

Test(config, no_children_or_unreadable_file)
{
    cr_assert_eq(load("[supervisor]\nintensity = 1\n"), -1);
    cr_assert_not_null(strstr(err, "no [child"), "%s", err);
    cr_assert_eq(config_load("/nonexistent/cqrsd.conf", &cfg, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "/nonexistent/cqrsd.conf"), "%s", err);
}

Test(config, heartbeat_timeout_shorter_than_heartbeat)
{
    cr_assert_eq(load("[supervisor]\nheartbeat_ms = 500\nheartbeat_timeout_ms = 100\n"
                      "[child wallet]\n"), -1);
    cr_assert_not_null(strstr(err, "heartbeat_timeout_ms"), "%s", err);
}

Test(config, malformed_line)
{
    cr_assert_eq(load("[child wallet]\nthis line has no equals sign\n"), -1);
    cr_assert_not_null(strstr(err, ":2:"), "%s", err);
}
