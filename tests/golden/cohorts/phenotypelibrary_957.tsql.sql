-- 957
WITH codesets AS (
  SELECT
    codeset_id AS codeset_id,
    concept_id AS concept_id
  FROM (
    SELECT
      4 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id AS concept_id
      FROM (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (443735, 443767, 192279, 443732, 376065, 443729, 201826)
        UNION
        SELECT
          c.concept_id
        FROM vocab.concept AS c
        JOIN vocab.concept_ancestor AS ca
          ON c.concept_id = ca.descendant_concept_id
        WHERE
          c.invalid_reason IS NULL
          AND ca.ancestor_concept_id IN (443735, 443767, 192279, 443732, 376065, 443729, 201826)
      ) AS i_set
      LEFT JOIN (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (
            4225656,
            4227210,
            435216,
            37016355,
            4228112,
            4224254,
            200687,
            201254,
            201531,
            4295011
          )
        UNION
        SELECT
          c.concept_id
        FROM vocab.concept AS c
        JOIN vocab.concept_ancestor AS ca
          ON c.concept_id = ca.descendant_concept_id
        WHERE
          c.invalid_reason IS NULL
          AND ca.ancestor_concept_id IN (
            4225656,
            4227210,
            435216,
            37016355,
            4228112,
            4224254,
            200687,
            201254,
            201531,
            4295011
          )
      ) AS e_set
        ON i_set.concept_id = e_set.concept_id
      WHERE
        e_set.concept_id IS NULL
    ) AS c
    UNION ALL
    SELECT
      5 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id AS concept_id
      FROM (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (21600744)
        UNION
        SELECT
          c.concept_id
        FROM vocab.concept AS c
        JOIN vocab.concept_ancestor AS ca
          ON c.concept_id = ca.descendant_concept_id
        WHERE
          c.invalid_reason IS NULL AND ca.ancestor_concept_id IN (21600744)
      ) AS i_set
    ) AS c
    UNION ALL
    SELECT
      6 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id AS concept_id
      FROM (
        SELECT
          concept_id AS concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (
            4197971,
            44786901,
            3004410,
            3034639,
            40758583,
            3007263,
            3003309,
            3005673,
            40762352,
            2212392
          )
      ) AS i_set
    ) AS c
  ) AS cs
), cohort_primary_events AS (
  SELECT
    P.ordinal AS event_id,
    P.person_id AS person_id,
    P.start_date AS start_date,
    P.end_date AS end_date,
    P.op_start_date AS op_start_date,
    P.op_end_date AS op_end_date,
    P.visit_occurrence_id AS visit_occurrence_id
  FROM (
    SELECT
      E.person_id AS person_id,
      E.start_date AS start_date,
      E.end_date AS end_date,
      ROW_NUMBER() OVER (
        PARTITION BY E.person_id
        ORDER BY E.sort_date ASC, E.event_id ASC, E.criteria_index ASC, OP.observation_period_start_date ASC
      ) AS ordinal,
      OP.observation_period_start_date AS op_start_date,
      OP.observation_period_end_date AS op_end_date,
      CAST(E.visit_occurrence_id AS BIGINT) AS visit_occurrence_id
    FROM (
      SELECT
        *,
        0 AS criteria_index
      FROM (
        SELECT
          C.person_id AS person_id,
          C.condition_occurrence_id AS event_id,
          C.start_date AS start_date,
          C.end_date AS end_date,
          C.visit_occurrence_id AS visit_occurrence_id,
          C.start_date AS sort_date,
          C.condition_concept_id AS domain_concept_id
        FROM (
          SELECT
            co.*,
            co.condition_start_date AS start_date,
            COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date,
            ROW_NUMBER() OVER (
              PARTITION BY co.person_id
              ORDER BY co.condition_start_date ASC, co.condition_occurrence_id ASC
            ) AS ordinal
          FROM cdm.condition_occurrence AS co
          JOIN codesets AS cs
            ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 4
        ) AS C
        WHERE
          C.ordinal = 1
      ) AS q
    ) AS E
    JOIN cdm.observation_period AS OP
      ON E.person_id = OP.person_id
      AND E.start_date >= OP.observation_period_start_date
      AND E.start_date <= OP.observation_period_end_date
    WHERE
      OP.observation_period_start_date <= E.start_date
      AND E.start_date <= OP.observation_period_end_date
  ) AS P
  WHERE
    P.ordinal = 1
), cohort_qualified_events AS (
  SELECT
    QE.person_id AS person_id,
    QE.event_id AS event_id,
    QE.start_date AS start_date,
    QE.end_date AS end_date,
    QE.op_start_date AS op_start_date,
    QE.op_end_date AS op_end_date,
    QE.visit_occurrence_id AS visit_occurrence_id
  FROM (
    SELECT
      pe.person_id AS person_id,
      pe.event_id AS event_id,
      pe.start_date AS start_date,
      pe.end_date AS end_date,
      pe.op_start_date AS op_start_date,
      pe.op_end_date AS op_end_date,
      pe.visit_occurrence_id AS visit_occurrence_id,
      ROW_NUMBER() OVER (PARTITION BY pe.person_id ORDER BY pe.start_date ASC, pe.event_id ASC) AS ordinal
    FROM cohort_primary_events AS pe
    JOIN (
      SELECT
        0 AS index_id,
        person_id AS person_id,
        event_id AS event_id
      FROM (
        SELECT
          E.person_id AS person_id,
          E.event_id AS event_id
        FROM cohort_primary_events AS E
        INNER JOIN (
          SELECT
            0 AS index_id,
            cc.person_id,
            cc.event_id
          FROM (
            SELECT
              P.person_id AS person_id,
              P.event_id AS event_id
            FROM cohort_primary_events AS P
            JOIN (
              SELECT
                C.person_id AS person_id,
                C.condition_occurrence_id AS event_id,
                C.start_date AS start_date,
                C.end_date AS end_date,
                C.visit_occurrence_id AS visit_occurrence_id,
                C.start_date AS sort_date,
                C.condition_concept_id AS domain_concept_id
              FROM (
                SELECT
                  co.*,
                  co.condition_start_date AS start_date,
                  COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date
                FROM cdm.condition_occurrence AS co
                JOIN codesets AS cs
                  ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 4
              ) AS C
            ) AS A
              ON A.person_id = P.person_id
              AND A.start_date >= P.op_start_date
              AND A.start_date <= P.op_end_date
              AND A.start_date >= CAST(DATEADD(DAY, 1, P.start_date) AS DATE)
              AND A.start_date <= P.op_end_date
          ) AS cc
          GROUP BY
            cc.person_id,
            cc.event_id
          HAVING
            COUNT(cc.event_id) >= 1
          UNION ALL
          SELECT
            1 AS index_id,
            cc.person_id,
            cc.event_id
          FROM (
            SELECT
              P.person_id AS person_id,
              P.event_id AS event_id
            FROM cohort_primary_events AS P
            JOIN (
              SELECT
                C.person_id AS person_id,
                C.drug_exposure_id AS event_id,
                C.start_date AS start_date,
                C.end_date AS end_date,
                C.visit_occurrence_id AS visit_occurrence_id,
                C.start_date AS sort_date,
                C.drug_concept_id AS domain_concept_id
              FROM (
                SELECT
                  de.*,
                  de.drug_exposure_start_date AS start_date,
                  COALESCE(
                    de.drug_exposure_end_date,
                    CAST(DATEADD(DAY, de.days_supply, de.drug_exposure_start_date) AS DATE),
                    CAST(DATEADD(DAY, 1, de.drug_exposure_start_date) AS DATE)
                  ) AS end_date
                FROM cdm.drug_exposure AS de
                JOIN codesets AS cs
                  ON de.drug_concept_id = cs.concept_id AND cs.codeset_id = 5
              ) AS C
            ) AS A
              ON A.person_id = P.person_id
              AND A.start_date >= P.op_start_date
              AND A.start_date <= P.op_end_date
              AND A.start_date >= P.start_date
              AND A.start_date <= P.op_end_date
          ) AS cc
          GROUP BY
            cc.person_id,
            cc.event_id
          HAVING
            COUNT(cc.event_id) >= 2
          UNION ALL
          SELECT
            2 AS index_id,
            cc.person_id,
            cc.event_id
          FROM (
            SELECT
              P.person_id AS person_id,
              P.event_id AS event_id
            FROM cohort_primary_events AS P
            JOIN (
              SELECT
                C.person_id AS person_id,
                C.measurement_id AS event_id,
                C.start_date AS start_date,
                C.end_date AS end_date,
                C.visit_occurrence_id AS visit_occurrence_id,
                C.start_date AS sort_date,
                C.measurement_concept_id AS domain_concept_id
              FROM (
                SELECT
                  m.*,
                  m.measurement_date AS start_date,
                  CAST(DATEADD(DAY, 1, m.measurement_date) AS DATE) AS end_date
                FROM cdm.measurement AS m
                JOIN codesets AS cs
                  ON m.measurement_concept_id = cs.concept_id AND cs.codeset_id = 6
              ) AS C
              WHERE
                C.unit_concept_id IN (8554)
                AND (
                  C.value_as_number >= 6.5000 AND C.value_as_number <= 30.0000
                )
            ) AS A
              ON A.person_id = P.person_id
              AND A.start_date >= P.op_start_date
              AND A.start_date <= P.op_end_date
              AND A.start_date >= CAST(DATEADD(DAY, -7, P.start_date) AS DATE)
              AND A.start_date <= P.op_end_date
          ) AS cc
          GROUP BY
            cc.person_id,
            cc.event_id
          HAVING
            COUNT(cc.event_id) >= 2
        ) AS CQ
          ON E.person_id = CQ.person_id AND E.event_id = CQ.event_id
        GROUP BY
          E.person_id,
          E.event_id
        HAVING
          COUNT(CQ.index_id) > 0
      ) AS G
    ) AS AC
      ON AC.person_id = pe.person_id AND AC.event_id = pe.event_id
  ) AS QE
  WHERE
    QE.ordinal = 1
), cohort_masked_events AS (
  SELECT
    Q.person_id AS person_id,
    Q.event_id AS event_id,
    Q.start_date AS start_date,
    Q.end_date AS end_date,
    Q.op_start_date AS op_start_date,
    Q.op_end_date AS op_end_date,
    0 AS inclusion_rule_mask,
    0 AS rule_count,
    0 AS min_rule_id
  FROM cohort_qualified_events AS Q
), cohort_included_events AS (
  SELECT
    R.person_id AS person_id,
    R.event_id AS event_id,
    R.start_date AS start_date,
    R.end_date AS end_date,
    R.op_start_date AS op_start_date,
    R.op_end_date AS op_end_date
  FROM (
    SELECT
      MG.person_id AS person_id,
      MG.event_id AS event_id,
      MG.start_date AS start_date,
      MG.end_date AS end_date,
      MG.op_start_date AS op_start_date,
      MG.op_end_date AS op_end_date,
      ROW_NUMBER() OVER (PARTITION BY MG.person_id ORDER BY MG.start_date ASC, MG.event_id ASC) AS ordinal
    FROM cohort_masked_events AS MG
  ) AS R
  WHERE
    R.ordinal = 1
), cohort_rows AS (
  SELECT
    I.person_id AS person_id,
    I.start_date AS start_date,
    I.op_end_date AS end_date
  FROM cohort_included_events AS I
  WHERE
    I.op_end_date >= I.start_date
), cohort_final AS (
  SELECT
    person_id AS person_id,
    start_date AS start_date,
    end_date AS end_date
  FROM cohort_rows
), cohort_out AS (
  SELECT
    person_id AS subject_id,
    start_date AS cohort_start_date,
    end_date AS cohort_end_date
  FROM cohort_final
), cohort_mask_counts AS (
  SELECT
    *
  FROM (
    SELECT
      0 AS mode_id,
      inclusion_rule_mask,
      COUNT(*) AS person_count
    FROM cohort_masked_events
    GROUP BY
      inclusion_rule_mask
    UNION ALL
    SELECT
      1 AS mode_id,
      inclusion_rule_mask,
      COUNT(*) AS person_count
    FROM (
      SELECT
        inclusion_rule_mask AS inclusion_rule_mask,
        ROW_NUMBER() OVER (
          PARTITION BY person_id
          ORDER BY rule_count DESC, min_rule_id ASC, start_date ASC, event_id ASC
        ) AS rank_value
      FROM cohort_masked_events
    ) AS B
    WHERE
      B.rank_value = 1
    GROUP BY
      inclusion_rule_mask
  ) AS mc
)
SELECT
  subject_id,
  cohort_start_date,
  cohort_end_date
FROM cohort_out
