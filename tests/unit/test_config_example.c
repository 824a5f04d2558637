/* The example configuration shipped in systemd/cqrsd.conf loads, and says
 * what the built-in defaults are. */
#include <criterion/criterion.h>
#include <string.h>

#include "config.h"

Test(config_example, shipped_file_equals_the_built_in_defaults)
{
    struct cqrsd_config file, builtin;
    char err[512];
    cr_assert_eq(config_load(CQRS_SOURCE_DIR "/systemd/cqrsd.conf", &file, err, sizeof err), 0,
                 "%s", err);
    config_defaults(&builtin);
    cr_assert_eq(file.strategy, builtin.strategy);
    cr_assert_eq(file.intensity, builtin.intensity);
    cr_assert_eq(file.period_s, builtin.period_s);
    cr_assert_eq(file.shutdown_timeout_ms, builtin.shutdown_timeout_ms);
    cr_assert_eq(file.start_timeout_ms, builtin.start_timeout_ms);
    cr_assert_eq(file.heartbeat_ms, builtin.heartbeat_ms);
    cr_assert_eq(file.heartbeat_timeout_ms, builtin.heartbeat_timeout_ms);
    cr_assert_eq(file.standby, builtin.standby);
    cr_assert_eq(file.log_level, builtin.log_level);
    cr_assert_eq(memcmp(&file.server, &builtin.server, sizeof file.server), 0,
                 "[server] differs from the built-in defaults");
    cr_assert_eq(memcmp(&file.storage, &builtin.storage, sizeof file.storage), 0,
                 "[storage] differs from the built-in defaults");
    cr_assert_eq(file.n_children, builtin.n_children);
    for (size_t i = 0; i < file.n_children; i++) {
        cr_assert_str_eq(file.children[i].name, builtin.children[i].name);
        cr_assert_eq(file.children[i].restart, builtin.children[i].restart);
        cr_assert_eq(file.children[i].shutdown_ms, builtin.children[i].shutdown_ms);
        cr_assert_eq(file.children[i].kind, builtin.children[i].kind);
    }
}
