-- The access endpoint each attempt was sent to (`https://cvm.ap-guangzhou.tencentcloudapi.com`):
-- with the API action and the sub-account, the scope of Tencent Cloud's rate limit, so
-- `status` and the run summary can report the achieved rate per API and endpoint
-- (src/store/rates.rs). Written by the executor when the attempt finishes; NULL for
-- attempts recorded before this version, which are reported as an unknown endpoint.
ALTER TABLE attempts ADD COLUMN endpoint TEXT;
