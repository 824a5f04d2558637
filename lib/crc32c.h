/*
 * crc32c — CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected 0x82F63B78),
 * the checksum of the event log records. Uses the SSE4.2 instruction when
 * the CPU has it, a table otherwise; both give the same values.
 */
#ifndef CQRS_CRC32C_H
#define CQRS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC32C of `len` bytes, continuing from `crc` (0 to start). */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
